"""The interpreter state a re-entered script must find as a fresh process would.

A survivor runs the script again in the same interpreter: what the last generation's script
changed in process-wide state (environment, logging tree, argv, sys.path, warnings, the
`__main__` module) is put back to what it was at launch before the next run. Imports are kept:
they are what makes re-entry fast.

Logging: root and the loggers that existed at launch are restored exactly (handlers the script
added are closed). A logger created since launch is a library's when its first name component
is, case-insensitively, the top-level name of an imported module (`transformers`, `DeepSpeed`,
`lightning.pytorch`): libraries configure their loggers once, at import, and are not imported
again, so those are kept as they are. Any other (the script's `__main__`, `train`, ...) is
reset to a new logger's state, so the script's re-run configures it once more, not twice.
Known limit: handlers a script adds to a library's logger stay, one more per generation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# typeshed lists neither warnings.defaultaction nor warnings.onceregistry, and types filters
# as a Sequence: it is the module's list, edited in place by filterwarnings().
_WARNINGS: Any = warnings


@dataclass(frozen=True)
class LoggerState:
    level: int
    handlers: tuple[logging.Handler, ...]
    filters: tuple[Any, ...]
    propagate: bool
    disabled: bool

    @staticmethod
    def of(logger: logging.Logger) -> LoggerState:
        return LoggerState(
            logger.level,
            tuple(logger.handlers),
            tuple(logger.filters),
            logger.propagate,
            logger.disabled,
        )


FRESH_LOGGER = LoggerState(logging.NOTSET, (), (), True, False)


@dataclass(frozen=True)
class LaunchState:
    environ: dict[str, str]
    path: tuple[str, ...]
    main_module: ModuleType
    loggers: dict[str, LoggerState]  # "" is the root logger
    logging_disable: int  # logging.disable()'s level
    warning_filters: tuple[Any, ...]
    warning_default_action: str
    warning_once_registry: dict[Any, Any]


def all_loggers() -> dict[str, logging.Logger]:
    """Root ("") and every logger created so far (placeholders are not loggers)."""
    found: dict[str, logging.Logger] = {"": logging.getLogger()}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            found[name] = logger
    return found


def capture() -> LaunchState:
    return LaunchState(
        environ=dict(os.environ),
        path=tuple(sys.path),
        main_module=sys.modules["__main__"],
        loggers={name: LoggerState.of(logger) for name, logger in all_loggers().items()},
        logging_disable=logging.root.manager.disable,
        warning_filters=tuple(_WARNINGS.filters),
        warning_default_action=_WARNINGS.defaultaction,
        warning_once_registry=dict(_WARNINGS.onceregistry),
    )


def environ_for_generation(
    launch: Mapping[str, str],
    generation: Mapping[str, str],
    current: Mapping[str, str],
    carried: Iterable[str],
) -> dict[str, str]:
    """The launch environment with the generation's variables over it; the `carried` names
    (the bootstrap's own markers about this process) keep their current values."""
    wanted = dict(launch)
    wanted.update({name: current[name] for name in carried if name in current})
    wanted.update(generation)
    return wanted


def apply_environ(target: MutableMapping[str, str], wanted: Mapping[str, str]) -> None:
    """Make `target` equal `wanted`, touching only what differs (each change is a putenv)."""
    for name in [n for n in target if n not in wanted]:
        del target[name]
    for name, value in wanted.items():
        if target.get(name) != value:
            target[name] = value


def library_heads(module_names: Iterable[str]) -> frozenset[str]:
    """Top-level names of the imported modules, lower-cased (`__main__` and such left out)."""
    return frozenset(m.split(".", 1)[0].lower() for m in module_names if not m.startswith("__"))


def is_library_logger(name: str, heads: frozenset[str]) -> bool:
    head = name.split(".", 1)[0].lower()
    return bool(head) and head in heads


def logger_targets(
    launch: Mapping[str, LoggerState],
    current: Mapping[str, LoggerState],
    module_names: Iterable[str],
) -> dict[str, LoggerState]:
    """What each current logger must become: its launch state, itself (a library's), or new."""
    heads = library_heads(module_names)
    wanted: dict[str, LoggerState] = {}
    for name, state in current.items():
        if name in launch:
            wanted[name] = launch[name]
        elif is_library_logger(name, heads):
            wanted[name] = state
        else:
            wanted[name] = FRESH_LOGGER
    return wanted


def restore_logging(state: LaunchState) -> None:
    loggers = all_loggers()
    current = {name: LoggerState.of(logger) for name, logger in loggers.items()}
    wanted = logger_targets(state.loggers, current, list(sys.modules))
    kept = {id(h) for target in wanted.values() for h in target.handlers}
    dropped: dict[int, logging.Handler] = {}
    for name, logger in loggers.items():
        target = wanted[name]
        for handler in logger.handlers:
            if id(handler) not in kept:
                dropped[id(handler)] = handler
        if logger.level != target.level:  # setLevel clears every logger's cache
            logger.setLevel(target.level)
        logger.handlers = list(target.handlers)
        logger.filters = list(target.filters)
        logger.propagate = target.propagate
        logger.disabled = target.disabled
    for handler in dropped.values():
        with contextlib.suppress(Exception):  # a broken stream must not stop the re-entry
            handler.flush()
            handler.close()
    logging.disable(state.logging_disable)


def restore_warnings(state: LaunchState) -> None:
    _WARNINGS.filters[:] = list(state.warning_filters)
    _WARNINGS.defaultaction = state.warning_default_action
    _WARNINGS.onceregistry.clear()
    _WARNINGS.onceregistry.update(state.warning_once_registry)
    # "once"/"default" warnings shown in the last generation show again, as in a new process.
    for module in list(sys.modules.values()):
        # The namespace itself: a lazy module's __getattr__ (transformers') may import.
        namespace = getattr(module, "__dict__", None)
        registry = namespace.get("__warningregistry__") if isinstance(namespace, dict) else None
        if isinstance(registry, dict):
            registry.clear()
    mutated = getattr(_WARNINGS, "_filters_mutated", None)
    if mutated is not None:
        mutated()


def restore(
    state: LaunchState, generation_env: Mapping[str, str], carried: Iterable[str] = ()
) -> None:
    """Back to launch state, with the next generation's variables in the environment."""
    wanted = environ_for_generation(state.environ, generation_env, os.environ, carried)
    apply_environ(os.environ, wanted)
    sys.path[:] = list(state.path)
    sys.modules["__main__"] = state.main_module
    restore_logging(state)
    restore_warnings(state)
