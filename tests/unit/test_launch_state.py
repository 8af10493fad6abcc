"""What a re-entered script finds: the interpreter state of launch
(launcher/worker/launch_state.py)."""

from __future__ import annotations

import logging
import os
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.worker import launch_state
from launcher.worker.launch_state import (
    FRESH_LOGGER,
    LoggerState,
    apply_environ,
    environ_for_generation,
    is_library_logger,
    library_heads,
    logger_targets,
)


@pytest.fixture
def launch() -> Iterator[launch_state.LaunchState]:
    """Captured now; whatever a test leaves behind is put back afterwards."""
    state = launch_state.capture()
    yield state
    launch_state.restore(state, {})


def test_environ_is_launch_plus_generation_with_the_carried_markers() -> None:
    launch = {"PATH": "/bin", "USER_SET": "1"}
    current = {"PATH": "/bin:/script", "SCRIPT_ADDED": "x", "ENDED": "0", "RANK": "1"}
    wanted = environ_for_generation(launch, {"RANK": "2"}, current, carried=("ENDED", "NONE"))
    assert wanted == {"PATH": "/bin", "USER_SET": "1", "ENDED": "0", "RANK": "2"}


def test_apply_environ_changes_only_what_differs() -> None:
    target = {"KEEP": "1", "DROP": "x", "CHANGE": "old"}
    apply_environ(target, {"KEEP": "1", "CHANGE": "new", "ADD": "y"})
    assert target == {"KEEP": "1", "CHANGE": "new", "ADD": "y"}


def test_library_loggers_are_told_by_imported_module_names() -> None:
    heads = library_heads(["deepspeed", "deepspeed.comm", "transformers.utils", "__main__"])
    assert is_library_logger("DeepSpeed", heads)  # DeepSpeed's logger name
    assert is_library_logger("transformers.trainer", heads)
    assert not is_library_logger("__main__", heads)
    assert not is_library_logger("train", heads)
    assert not is_library_logger("", heads)


def test_logger_targets() -> None:
    handler = logging.NullHandler()
    at_launch = LoggerState(logging.WARNING, (), (), True, False)
    library = LoggerState(logging.INFO, (handler,), (), False, False)
    script = LoggerState(logging.DEBUG, (handler,), (), True, False)
    current = {"": script, "lib": library, "mine": script}
    wanted = logger_targets({"": at_launch}, current, ["lib"])
    assert wanted == {"": at_launch, "lib": library, "mine": FRESH_LOGGER}


def script_configures_logging(log_file: Path) -> logging.Logger:
    """What a training script typically does at its top level, run once per generation."""
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    mine = logging.getLogger("reentry_test_script")
    mine.addHandler(logging.FileHandler(log_file))
    mine.propagate = False
    mine.setLevel(logging.DEBUG)
    return mine


def test_logging_tree_is_back_at_launch_and_the_script_handlers_are_closed(
    launch: launch_state.LaunchState, tmp_path: Path
) -> None:
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    log_file = tmp_path / "script.log"
    mine = script_configures_logging(log_file)
    added = [h for h in root.handlers if h not in root_handlers] + list(mine.handlers)
    library = logging.getLogger("pytest.reentry_test_library")  # pytest is imported
    library_handler = logging.NullHandler()
    library.addHandler(library_handler)

    launch_state.restore(launch, {})

    assert root.handlers == root_handlers and root.level == root_level
    assert all(isinstance(h, logging.FileHandler) and h.stream is None for h in added)
    assert mine.handlers == [] and mine.propagate and mine.level == logging.NOTSET
    assert library.handlers == [library_handler]  # imported once: its set-up is kept
    library.removeHandler(library_handler)


def test_no_log_line_is_duplicated_after_reentry(
    launch: launch_state.LaunchState, tmp_path: Path
) -> None:
    log_file = tmp_path / "script.log"
    for generation in range(3):
        mine = script_configures_logging(log_file)
        mine.info("generation %d", generation)
        launch_state.restore(launch, {})
    assert log_file.read_text().splitlines() == [f"generation {g}" for g in range(3)]


def test_environment_argv_path_and_main_module(launch: launch_state.LaunchState) -> None:
    os.environ["REENTRY_TEST_ADDED"] = "1"
    sys.path.append("/reentry/test/path")
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")

    launch_state.restore(launch, {"REENTRY_TEST_GENERATION": "1"})

    assert "REENTRY_TEST_ADDED" not in os.environ
    assert os.environ["REENTRY_TEST_GENERATION"] == "1"
    assert "/reentry/test/path" not in sys.path
    assert sys.modules["__main__"] is main


def test_warning_filters_and_registries() -> None:
    with warnings.catch_warnings(record=True) as shown:
        launch = launch_state.capture()  # launch state inside the recorder
        warnings.simplefilter("once")
        warnings.warn("from generation 0", UserWarning, stacklevel=1)
        warnings.warn("from generation 0", UserWarning, stacklevel=1)
        warnings.filterwarnings("ignore", message="silenced by the script")
        assert len(shown) == 1

        launch_state.restore(launch, {})
        warnings.simplefilter("once")  # the script's re-run sets it again
        warnings.warn("from generation 0", UserWarning, stacklevel=1)
        assert len(shown) == 2, "shown once per generation, as in a new process"

        launch_state.restore(launch, {})
        assert list(warnings.filters) == list(launch.warning_filters)
        launch_state.restore(launch, {})  # environment included: nothing left behind
