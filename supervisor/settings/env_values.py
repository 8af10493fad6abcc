"""Reading SUPERVISOR_* values: one lookup rule and the checks every setting shares (pure)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Variable:
    """One setting, as docs/configuration.md lists it (tools/gen_config_doc.py).

    `flag` overrides the variable ("" for none). `default` is the value that acts
    as leaving the variable unset; "" when unset means something no value does,
    which `help` then says.
    """

    name: str
    flag: str
    help: str
    default: str = ""


class ConfigError(ValueError):
    """One line naming the variable (or flag) and what is wrong with its value."""


class Source:
    """Looks a variable up in the overrides, then the environment; labels say which."""

    def __init__(
        self, env: Mapping[str, str], overrides: Mapping[str, str], flags: Mapping[str, str]
    ) -> None:
        self.env = env
        self.overrides = overrides
        self.flags = flags  # variable name -> the command-line flag that overrides it

    def get(self, name: str) -> Optional[tuple[str, str]]:
        """(label, value), or None when unset or empty (Kubernetes' way to unset)."""
        if self.overrides.get(name):
            return self.flags.get(name) or name, self.overrides[name]
        value = self.env.get(name)
        return (name, value) if value else None


def bad_value(label: str, value: str, problem: str) -> ConfigError:
    shown = value if len(value) <= 120 else value[:117] + "..."
    return ConfigError(f"{label}={shown!r}: {problem}")


def integer(src: Source, name: str, default: int, low: int, high: int) -> int:
    found = src.get(name)
    if found is None:
        return default
    label, value = found
    if not DIGITS.fullmatch(value.strip()) or not low <= int(value) <= high:
        raise bad_value(label, value, f"must be an integer in {low}..{high}")
    return int(value)


def number(src: Source, name: str, default: float, unit: str, allow_zero: bool) -> float:
    """A finite number > 0 (>= 0 with allow_zero); `unit` names it in the error."""
    found = src.get(name)
    if found is None:
        return default
    label, value = found
    try:
        parsed = float(value)
    except ValueError:
        parsed = math.nan
    if not math.isfinite(parsed) or parsed < 0 or (parsed == 0 and not allow_zero):
        raise bad_value(
            label, value, f"must be a number of {unit} " + (">= 0" if allow_zero else "> 0")
        )
    return parsed


def seconds(src: Source, name: str, default: float, allow_zero: bool) -> float:
    return number(src, name, default, "seconds", allow_zero)


def boolean(src: Source, name: str, default: bool) -> bool:
    """1/0 (or true/false)."""
    found = src.get(name)
    if found is None:
        return default
    label, value = found
    if value.strip().lower() not in ("0", "1", "true", "false"):
        raise bad_value(label, value, "must be 0 or 1")
    return value.strip().lower() in ("1", "true")
