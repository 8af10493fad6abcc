"""What a warm spare imports while idle (launcher/worker/warm_imports.py), on real files and
modules."""

from __future__ import annotations

import importlib
import os
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.worker.library_warmups import LibraryWarmup
from launcher.worker.warm_imports import (
    Manifest,
    ManifestWriter,
    importable_names,
    preimport,
    read_manifest,
    start_warming,
    still_to_import,
    warm_until_promoted,
)


def module(name: str, spec_name: str | None = None) -> types.ModuleType:
    made = types.ModuleType(name)
    made.__spec__ = types.SimpleNamespace(name=spec_name or name)  # type: ignore[assignment]
    return made


def test_only_real_modules_are_listed_in_import_order() -> None:
    loaded = {
        "json": module("json"),
        "os.path": module("posixpath"),  # an alias: os.path is posixpath
        "__main__": module("__main__"),
        "pkg.__main__": module("pkg.__main__"),
        "placeholder": None,
        "built_at_run_time": types.ModuleType("built_at_run_time"),  # no spec
        "email.parser": module("email.parser"),
    }
    assert importable_names(loaded) == ["json", "email.parser"]


def test_the_script_and_what_is_loaded_already_are_left_out() -> None:
    listed = ["json", "train", "train.__main__", "mypkg.model", "__mp_main__"]
    assert still_to_import(listed, {"json"}, target="train") == ["mypkg.model"]


def test_the_manifest_is_rewritten_only_when_more_modules_are_loaded(tmp_path: Path) -> None:
    path = tmp_path / "modules.txt"
    writer = ManifestWriter(str(path))
    loaded = {"json": module("json")}
    assert writer.update(loaded) and read_manifest(str(path)) == Manifest(["json"])
    assert not writer.update(loaded), "nothing new: no rewrite"
    loaded["email.parser"] = module("email.parser")
    assert writer.update(loaded)
    assert read_manifest(str(path)) == Manifest(["json", "email.parser"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["modules.txt"], "no partial file left"
    assert read_manifest(str(tmp_path / "missing.txt")) is None


@pytest.fixture
def modules_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory of throwaway modules on sys.path; they are unloaded afterwards."""
    sys.path.insert(0, str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_spare_imports_each_listed_module_until_it_is_promoted(modules_dir: Path) -> None:
    (modules_dir / "warm_model_defs.py").write_text("LOADED = True\n")
    (modules_dir / "warm_broken.py").write_text("raise RuntimeError('needs a GPU')\n")
    (modules_dir / "warm_train.py").write_text("raise AssertionError('the script must not run')\n")
    manifest = modules_dir / "modules.txt"
    promoted = threading.Event()
    imported: list[str] = []

    def record(name: str) -> object:
        imported.append(name)
        return __import__(name)

    spare = threading.Thread(
        target=warm_until_promoted,
        args=(str(manifest), "warm_train", promoted, 0.01, record),
        daemon=True,
    )
    spare.start()  # no manifest yet: the spare waits for one
    ManifestWriter(str(manifest)).update(
        {name: module(name) for name in ("warm_broken", "warm_train", "warm_model_defs")}
    )
    deadline = threading.Event()
    for _ in range(500):
        if "warm_model_defs" in sys.modules:
            break
        deadline.wait(0.01)
    promoted.set()
    spare.join(5)
    assert not spare.is_alive(), "promotion stops the warm-up"
    assert sys.modules["warm_model_defs"].LOADED
    # The broken module was tried and skipped; the script itself was never imported.
    assert imported == ["warm_broken", "warm_model_defs"]
    assert "warm_train" not in sys.modules


def test_preimport_imports_each_module_and_reports_the_ones_that_fail(modules_dir: Path) -> None:
    (modules_dir / "pre_first.py").write_text("LOADED = True\n")
    (modules_dir / "pre_broken.py").write_text("raise RuntimeError('needs a GPU')\n")
    (modules_dir / "pre_last.py").write_text("LOADED = True\n")
    failed = preimport(["pre_first", "pre_broken", "pre_missing", "pre_last"])
    assert "pre_first" in sys.modules and "pre_last" in sys.modules
    assert failed == [
        "pre_broken: RuntimeError: needs a GPU",
        "pre_missing: ModuleNotFoundError: No module named 'pre_missing'",
    ]


def test_preimport_leaves_the_environment_as_it_found_it(
    modules_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch._inductor's import sets TORCHINDUCTOR_CACHE_DIR: the script must not see it."""
    (modules_dir / "pre_env.py").write_text(
        "import os\nos.environ['PRE_ENV_ADDED'] = '1'\nos.environ['PRE_ENV_KEPT'] = 'changed'\n"
    )
    monkeypatch.setenv("PRE_ENV_KEPT", "original")
    assert preimport(["pre_env"]) == []
    assert "PRE_ENV_ADDED" not in os.environ and os.environ["PRE_ENV_KEPT"] == "original"


def test_promotion_waits_for_the_import_in_flight(modules_dir: Path) -> None:
    """A script importing while the warm-up thread still imports the same package can see it
    half-initialized; so promoting the spare returns only once that import has ended."""
    started = modules_dir / "started"
    (modules_dir / "warm_slow.py").write_text(
        f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\n"
        "time.sleep(1.0)  # an import that takes a while (transformers takes seconds)\n"
        "COMPLETE = True\n"
    )
    manifest = modules_dir / "modules.txt"
    ManifestWriter(str(manifest)).update({"warm_slow": module("warm_slow")})
    promoted = start_warming(str(manifest), "")
    deadline = threading.Event()
    for _ in range(1000):
        if started.exists():
            break
        deadline.wait(0.01)
    assert started.exists(), "the warm-up began importing warm_slow"
    promoted.set()
    assert getattr(sys.modules.get("warm_slow"), "COMPLETE", False), "set() returned mid-import"


def test_the_manifest_lists_what_libraries_loaded_and_is_rewritten_when_they_load_more(
    tmp_path: Path,
) -> None:
    """An op loaded with no module imported along with it still rewrites the list."""
    library = module("warm_lib")
    library.OPS = ["first_op"]  # type: ignore[attr-defined]
    warmups = (LibraryWarmup("warm_lib", lambda m: list(m.OPS), lambda m, name: None),)
    path = tmp_path / "modules.txt"
    writer = ManifestWriter(str(path), warmups)
    loaded = {"json": module("json"), "warm_lib": library}
    assert writer.update(loaded)
    assert read_manifest(str(path)) == Manifest(["json", "warm_lib"], [("warm_lib", "first_op")])
    assert not writer.update(loaded)
    library.OPS.append("second_op")  # type: ignore[attr-defined]
    assert writer.update(loaded)
    listed = read_manifest(str(path))
    assert listed is not None and listed.loaded == [
        ("warm_lib", "first_op"),
        ("warm_lib", "second_op"),
    ]


def test_a_spare_loads_what_the_listed_libraries_loaded_once_each_failures_reported(
    modules_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (modules_dir / "warm_ops_lib.py").write_text("LOADED = []\n")
    manifest = modules_dir / "modules.txt"
    calls: list[str] = []

    def load(library: types.ModuleType, name: str) -> None:
        calls.append(name)
        if name == "broken_op":
            raise RuntimeError("ninja not found")
        library.LOADED.append(name)

    warmups = (
        LibraryWarmup("warm_ops_lib", lambda m: [], load),
        LibraryWarmup("warm_never_imported", lambda m: [], load),
    )
    manifest.write_text(
        Manifest(
            ["warm_ops_lib"],
            [
                ("warm_ops_lib", "fused_op"),
                ("warm_ops_lib", "broken_op"),
                ("warm_never_imported", "other_op"),  # listed, but not importable here
            ],
        ).text()
    )
    promoted = threading.Event()
    spare = threading.Thread(
        target=warm_until_promoted,
        args=(str(manifest), "", promoted, 0.01, importlib.import_module, warmups),
        daemon=True,
    )
    spare.start()
    deadline = threading.Event()
    for _ in range(500):
        if len(calls) >= 2:
            break
        deadline.wait(0.01)
    deadline.wait(0.1)  # a few more rounds: nothing is tried twice
    promoted.set()
    spare.join(5)
    assert sys.modules["warm_ops_lib"].LOADED == ["fused_op"]
    assert calls == ["fused_op", "broken_op"], "each once; none for a library not imported"
    assert "train-launch: spare warm-up: warm_ops_lib broken_op: RuntimeError: ninja not found" in (
        capfd.readouterr().err
    )
