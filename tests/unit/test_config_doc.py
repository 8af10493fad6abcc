"""docs/configuration.md: what tools/gen_config_doc.py writes from the code, and complete.

A variable added to the code without a definition the generator reads (or
without regenerating the file) fails here.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from supervisor.settings.detection import DETECT_VARIABLES
from supervisor.settings.env_values import Variable
from supervisor.settings.serve import parse_config
from supervisor.settings.snapshots import OFFLOAD_VARIABLES
from supervisor.settings.variables import VARIABLES

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configuration.md"
PACKAGES = ("supervisor", "launcher", "train_supervisor")
GENERATED = REPO / "train_supervisor" / "v1"
OUR_NAME = re.compile(r"(?:SUPERVISOR|TRAIN_LAUNCH|TRAIN_SUPERVISOR)_[A-Z0-9_]+")
TOKEN = {"SUPERVISOR_TOKEN": "doc-test-token-0123456789"}


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_doc", REPO / "tools/gen_config_doc.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def named_variables(roots: list[Path]) -> dict[str, str]:
    """Every string literal in the Python files under `roots` that is one of our variable
    names -> the first file:line naming it."""
    found: dict[str, str] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if GENERATED in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and OUR_NAME.fullmatch(node.value)
                ):
                    found.setdefault(node.value, f"{path.relative_to(root.parent)}:{node.lineno}")
    return found


def documented_names() -> set[str]:
    return set(re.findall(r"`(" + OUR_NAME.pattern + r")`", DOC.read_text(encoding="utf-8")))


def test_the_committed_reference_is_what_the_generator_writes() -> None:
    assert DOC.read_text(encoding="utf-8") == load_tool().render(), (
        "docs/configuration.md is stale: run `python tools/gen_config_doc.py`"
    )


def test_every_variable_the_code_names_is_in_the_reference() -> None:
    named = named_variables([REPO / package for package in PACKAGES])
    assert len(named) > 40  # the scan sees the code: SUPERVISOR_* settings and launcher names
    missing = {name: where for name, where in named.items() if name not in documented_names()}
    assert not missing, f"not in docs/configuration.md (add a definition): {missing}"


def test_a_new_variable_without_a_definition_is_caught(tmp_path: Path) -> None:
    package = tmp_path / "newpkg"
    package.mkdir()
    (package / "mod.py").write_text(
        'NEW = "SUPERVISOR_NEW_KNOB"\nOLD = "SUPERVISOR_NNODES"\nMSG = f"{NEW}: bad"\n'
    )
    named = named_variables([package])
    assert set(named) == {"SUPERVISOR_NEW_KNOB", "SUPERVISOR_NNODES"}
    assert set(named) - documented_names() == {"SUPERVISOR_NEW_KNOB"}


DEFAULTED = [v for v in (*VARIABLES, *OFFLOAD_VARIABLES, *DETECT_VARIABLES) if v.default]


@pytest.mark.parametrize("variable", DEFAULTED, ids=[v.name for v in DEFAULTED])
def test_a_documented_default_acts_as_leaving_the_variable_unset(variable: Variable) -> None:
    unset = parse_config(TOKEN)
    assert parse_config({**TOKEN, variable.name: variable.default}) == unset
    if variable.flag:
        assert parse_config(TOKEN, {variable.name: variable.default}) == unset


def test_check_mode_reports_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tool, doc = load_tool(), tmp_path / "configuration.md"
    doc.write_text("# old\n")
    assert tool.main(["--check"], doc) == 1
    assert "stale" in capsys.readouterr().out
    assert tool.main([], doc) == 0 and tool.main(["--check"], doc) == 0
    assert doc.read_text() == tool.render()
