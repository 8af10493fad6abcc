"""A warm spare imports, while idle, what the pod's ranks have imported.

A spare that takes a failed rank and only then imports what its peers loaded
long ago holds every surviving rank at the first collective: DDP's first
construction alone pulls in torch._dynamo (over a second on 2 busy cores), and
a script's `import transformers` takes seconds. So local rank 0 lists its
loaded modules in a file whenever that list has grown (looked at every 0.5 s,
from its first generation's start: a script imports most before its first
step), and each spare polls the file and imports the names it does not have
yet, until it is given a rank. The file also lists what the libraries loaded
beyond imports (library_warmups.py: DeepSpeed's JIT-loaded ops), which the
spare loads the same way once the library is imported.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from launcher.worker.library_warmups import (
    LIBRARY_WARMUPS,
    LibraryWarmup,
    loaded_by_libraries,
    warm_library,
)

# The manifest's path, for the bootstrap only (removed before the script runs).
MANIFEST_ENV = "TRAIN_LAUNCH_IMPORTS_MANIFEST"
# --preimport's modules, comma-separated, for the bootstrap only (removed likewise).
PREIMPORT_ENV = "TRAIN_LAUNCH_PREIMPORT"
MANIFEST_NAME = "modules.txt"
POLL_S = 0.25
# How often local rank 0 looks whether it loaded more modules (a length check when it did not).
LIST_EVERY_S = 0.5


def _is_main(name: str) -> bool:
    return name in ("__main__", "__mp_main__") or name.endswith(".__main__")


def importable_names(modules: Mapping[str, object]) -> list[str]:
    """Loaded modules by name, in import order, that an import statement would load again.

    Left out: aliases (os.path is posixpath), placeholders without a spec
    (None entries, modules built at run time) and the script itself.
    """
    names = []
    for name, module in list(modules.items()):  # a copy: the main thread may be importing
        spec = getattr(module, "__spec__", None)
        if spec is not None and getattr(spec, "name", None) == name and not _is_main(name):
            names.append(name)
    return names


def still_to_import(listed: Sequence[str], loaded: Container[str], target: str) -> list[str]:
    """The listed names not loaded yet, never the script's own module (importing it runs it)."""
    return [name for name in listed if name not in loaded and name != target and not _is_main(name)]


@dataclass(frozen=True)
class Manifest:
    """What local rank 0 has: modules by name, in import order, then (library module, name)
    for what the libraries loaded beyond imports. One line each; a module name has no space,
    so a line with one is "<library module> <name>"."""

    modules: list[str]
    loaded: list[tuple[str, str]] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join([*self.modules, *(f"{m} {n}" for m, n in self.loaded)])

    @classmethod
    def parse(cls, text: str) -> Manifest:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        loaded = [(m, n) for m, _, n in (line.partition(" ") for line in lines) if n]
        return cls([line for line in lines if " " not in line], loaded)


class ManifestWriter:
    """Local rank 0's side: rewrites the list (atomically) when more modules are loaded, or
    a library loaded more."""

    def __init__(self, path: str, warmups: Sequence[LibraryWarmup] = LIBRARY_WARMUPS) -> None:
        self.path = path
        self.warmups = warmups
        self._listed = 0
        self._loaded: list[tuple[str, str]] = []

    def update(self, modules: Mapping[str, object]) -> bool:
        # Every time: a library can load more (an op) with no module imported along with it.
        loaded = loaded_by_libraries(modules, self.warmups)
        if len(modules) == self._listed and loaded == self._loaded:
            return False
        listed = len(modules)
        manifest = Manifest(importable_names(modules), loaded)
        partial = f"{self.path}.{os.getpid()}.partial"
        with open(partial, "w") as handle:
            handle.write(manifest.text())
        os.replace(partial, self.path)  # a spare never reads half a list
        self._listed, self._loaded = listed, loaded
        return True


def list_imports_forever(
    writer: ManifestWriter,
    modules: Mapping[str, object],
    listing: Callable[[], bool],
    every_s: float = LIST_EVERY_S,
) -> None:
    """Local rank 0's loop (a daemon thread): keep the list current while `listing()` says this
    process lists. Not tied to steps: the script's imports (transformers, megatron-core, DeepSpeed:
    seconds each) come before its first step, and a spare that learnt of them only then was
    still importing them when a rank failed a few steps later."""
    while True:
        if listing():
            with contextlib.suppress(OSError):  # only the spares' head start is lost
                writer.update(modules)
        time.sleep(every_s)


def read_manifest(path: str) -> Optional[Manifest]:
    try:
        with open(path) as handle:
            return Manifest.parse(handle.read())
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def environment_kept() -> Iterator[None]:
    """os.environ as it was on entry, whatever ran inside set (torch._inductor's import sets
    TORCHINDUCTOR_CACHE_DIR): the script sees the environment torchrun would give it."""
    environ = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update((k, v) for k, v in environ.items() if os.environ.get(k) != v)


def preimport(
    names: Sequence[str], import_module: Callable[[str], object] = importlib.import_module
) -> list[str]:
    """Import `names` (--preimport) before the script first runs; what failed, and why.

    A worker freezes what is alive when a generation's script starts out of the
    collection that ends the generation: whatever the script imports itself
    stays in it until the next generation. DDP's first construction imports
    torch._dynamo and sympy, ~120k objects: 0.07 s a walk idle, 0.15-0.25 s in a
    recovery on 2 busy cores, on every surviving rank's critical path.
    """
    failed = []
    with environment_kept():
        for name in names:
            try:
                import_module(name)
            except Exception as err:  # the script, if it needs the module, gets the error itself
                failed.append(f"{name}: {type(err).__name__}: {err}")
    return failed


def warm_until_promoted(
    path: str,
    target: str,
    promoted: threading.Event,
    poll_s: float = POLL_S,
    import_module: Callable[[str], object] = importlib.import_module,
    warmups: Sequence[LibraryWarmup] = LIBRARY_WARMUPS,
) -> None:
    """A spare's background loop: import each newly listed module, then load what the listed
    libraries loaded beyond imports, until `promoted` is set.

    A module that fails to import is skipped: the script, if it needs it, gets
    the same error itself, where it belongs. A library's load that fails is
    reported on stderr and not tried again; the script loads it itself.
    """
    seen: Optional[tuple[int, int, int]] = None
    warmed: set[tuple[str, str]] = set()  # tried, whatever came of it
    manifest = Manifest([])
    while not promoted.is_set():
        with contextlib.suppress(FileNotFoundError), environment_kept():
            stat = os.stat(path)
            version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # each rewrite is a new file
            fresh = read_manifest(path) if version != seen else None
            seen = version
            manifest = fresh or manifest
            for name in still_to_import(fresh.modules if fresh else [], sys.modules, target):
                if promoted.is_set():
                    return
                with contextlib.suppress(Exception, SystemExit):
                    import_module(name)
            for library, name in manifest.loaded:
                if promoted.is_set():
                    return
                if (library, name) in warmed or library not in sys.modules:
                    continue  # a library not imported yet: its turn comes once it is
                warmed.add((library, name))
                failure = warm_library(sys.modules, library, name, warmups)
                if failure:
                    print(f"train-launch: spare warm-up: {failure}", file=sys.stderr, flush=True)
        promoted.wait(poll_s)


class _Promotion(threading.Event):
    """Set: the warm-up stops, and `set` returns once its import (or library load) in flight
    has ended. A script that imported while that import still ran in the other thread could
    get a half-initialized package (transformers' lazy module: "cannot import name
    'GPT2Config'")."""

    def __init__(self) -> None:
        super().__init__()
        self.warmer: Optional[threading.Thread] = None

    def set(self) -> None:
        super().set()
        if self.warmer is not None and self.warmer is not threading.current_thread():
            self.warmer.join()


def start_warming(path: str, target: str) -> threading.Event:
    """Run `warm_until_promoted` in a daemon thread; set the returned event to stop it (setting it
    waits for the import in flight)."""
    promoted = _Promotion()
    promoted.warmer = threading.Thread(
        target=warm_until_promoted, args=(path, target, promoted), name="warm-imports", daemon=True
    )
    promoted.warmer.start()
    return promoted
