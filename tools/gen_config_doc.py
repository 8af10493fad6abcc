"""Write docs/configuration.md from the configuration's definitions in the code.

Every variable comes from its definition (supervisor/settings/serve.py VARIABLES,
supervisor/*_config.py, launcher/launch/variables.py), every flag from the parsers
themselves (argparse introspection), so the reference cannot drift; the unit
test tests/unit/test_config_doc.py fails when the file is stale.
Run:  python tools/gen_config_doc.py            (rewrites the file)
      python tools/gen_config_doc.py --check    (exit 1 when it is stale)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# After the path: the package is imported from this checkout.
from launcher.launch.args import UNSUPPORTED_TORCHRUN_FLAGS  # noqa: E402
from launcher.launch.args import build_parser as launch_parser  # noqa: E402
from launcher.launch.variables import (  # noqa: E402
    BOOTSTRAP_VARIABLES,
    LAUNCHER_VARIABLES,
    SCRIPT_VARIABLES,
)
from supervisor.cli import build_parser as supervisor_parser  # noqa: E402
from supervisor.outputs.kube.settings import KUBE_VARIABLES, POD_VARIABLES  # noqa: E402
from supervisor.settings.detection import DETECT_VARIABLES  # noqa: E402
from supervisor.settings.env_values import Variable  # noqa: E402
from supervisor.settings.outputs import OUTPUTS_VARIABLES  # noqa: E402
from supervisor.settings.snapshots import OFFLOAD_VARIABLES  # noqa: E402
from supervisor.settings.variables import FOREIGN_VARIABLES, VARIABLES  # noqa: E402

DOC = REPO / "docs" / "configuration.md"
PROBE = "__probe__"  # a PET_* value no default equals


def cell(text: str) -> str:
    """Table-cell text: no pipes, no angle brackets read as HTML."""
    return text.replace("|", "\\|").replace("<", "\\<").replace(">", "\\>")


def code(text: str) -> str:
    return f"`{text}`" if text else "—"


def variable_table(variables: Iterable[Variable], with_flags: bool = True) -> list[str]:
    head = "| variable | flag | default | meaning |" if with_flags else "| variable | meaning |"
    lines = [head, "|---|---|---|---|" if with_flags else "|---|---|"]
    for v in variables:
        if with_flags:
            lines.append(f"| `{v.name}` | {code(v.flag)} | {code(v.default)} | {cell(v.help)} |")
        else:
            lines.append(f"| `{v.name}` | {cell(v.help)} |")
    return lines


def _pet_name(action: argparse.Action) -> str:
    """The PET_* variable that sets this flag's default, found by setting it."""
    name = f"PET_{action.dest.upper()}"
    probed = launch_parser({name: PROBE})
    for other in probed._actions:
        if other.dest == action.dest and other.default != action.default:
            return name
    return ""


def _default(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    return "" if action.default is None else str(action.default)


def _flags(action: argparse.Action) -> str:
    return ", ".join(f"`{flag}`" for flag in action.option_strings)


def _documented(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help"
    ]


def launch_flags_table() -> list[str]:
    parser = launch_parser({})
    lines = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for action in _documented(parser):
        pet, default = code(_pet_name(action)), code(_default(action))
        lines.append(f"| {_flags(action)} | {pet} | {default} | {cell(action.help or '')} |")
    return lines


def positional_lines(parser: argparse.ArgumentParser) -> list[str]:
    return [
        f"- `{a.dest}`: {a.help}"
        for a in parser._actions
        if not a.option_strings and a.help != argparse.SUPPRESS
    ]


def client_flags_table() -> list[str]:
    parser = supervisor_parser({})
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {a.dest: a.help or "" for a in subcommands._choices_actions}
    lines = ["| command | flag | default | meaning |", "|---|---|---|---|"]
    for command, sub in subcommands.choices.items():
        if command == "serve":
            continue  # the variables' flags, above
        actions = _documented(sub)
        if not actions:
            lines.append(f"| `{command}` | — | — | {cell(summaries[command])}; no flags |")
        for action in actions:
            default, meaning = code(_default(action)), cell(action.help or "")
            lines.append(f"| `{command}` | {_flags(action)} | {default} | {meaning} |")
    return lines


def render() -> str:
    outputs = {v.name for v in OUTPUTS_VARIABLES}
    documented = {
        v.name
        for v in (
            *VARIABLES,
            *OFFLOAD_VARIABLES,
            *DETECT_VARIABLES,
            *KUBE_VARIABLES,
            *LAUNCHER_VARIABLES,
            *SCRIPT_VARIABLES,
            *BOOTSTRAP_VARIABLES,
        )
    }
    foreign = sorted(FOREIGN_VARIABLES - documented)
    refused = sorted({f.replace("_", "-") for f in UNSUPPORTED_TORCHRUN_FLAGS})
    parts: list[Sequence[str]] = [
        [
            "# Configuration reference",
            "",
            "<!-- Generated by `python tools/gen_config_doc.py` from the definitions in the "
            "code; do not edit. tests/unit/test_config_doc.py fails when it is stale. -->",
            "",
            "Every environment variable and flag of `train-supervisor` and `train-launch`. A "
            "flag overrides its variable. An empty value counts as unset (Kubernetes' way to "
            "unset a variable). A bad value stops the program with one line naming the variable "
            "(or flag) and exit code 2. A default is the value that acts as leaving the variable "
            "unset; where unset means more than a value, the meaning says so. `train-supervisor "
            "serve` logs a warning for each `SUPERVISOR_*` name it does not know (a typo, most "
            "likely).",
            "",
            "## The sidecar: `train-supervisor serve`",
            "",
        ],
        variable_table(v for v in VARIABLES if v.name not in outputs),
        [
            "",
            "## Outputs: `/metrics` and logs",
            "",
            "Read by `train-supervisor serve` (the flags are its) and by `train-launch "
            "--standalone`, whose embedded supervisor serves and logs the same way.",
            "",
        ],
        variable_table(OUTPUTS_VARIABLES),
        [
            "",
            "## Snapshots: replication and persistence",
            "",
            "Environment only. Read by `train-supervisor serve` and by `train-launch "
            "--standalone`.",
            "",
        ],
        variable_table(OFFLOAD_VARIABLES),
        [
            "",
            "## Detection: hangs, pod metrics, stragglers, repeated faults",
            "",
            "Environment only. Read by `train-supervisor serve` and by `train-launch "
            "--standalone`.",
            "",
        ],
        variable_table(DETECT_VARIABLES),
        [
            "",
            "## Kubernetes: Events on the pod, condition and taint on the node",
            "",
            "Environment only, `train-supervisor serve` only; off unless switched on, and then "
            "only with the `kube` extra installed (see [kubernetes.md](kubernetes.md)). The pod's "
            "identity comes from the downward API:",
            "",
        ],
        variable_table(KUBE_VARIABLES),
        ["", *variable_table(POD_VARIABLES, with_flags=False)],
        [
            "",
            "## `train-launch` flags",
            "",
            "torchrun's flags (with their `PET_*` environment forms, which the flag overrides) "
            "and ours. Positional:",
            "",
        ],
        positional_lines(launch_parser({})),
        ["", *launch_flags_table()],
        [
            "",
            "Refused with one line naming them, never ignored (and so are their `PET_*` "
            "variables): " + ", ".join(f"`{f}`" for f in refused) + ".",
            "",
            "## `train-launch` environment",
            "",
            "Besides the flags' `PET_*` forms. With `--standalone` it also reads the Outputs, "
            "Snapshots and Detection variables above.",
            "",
        ],
        variable_table(LAUNCHER_VARIABLES),
        [
            "",
            "## Set by `train-launch` for the training script",
            "",
            "Besides torchrun's worker environment (RANK, WORLD_SIZE, MASTER_ADDR, ...: see the "
            "*Worker environment* in launcher.md).",
            "",
        ],
        variable_table(SCRIPT_VARIABLES, with_flags=False),
        [
            "",
            "## Internal: `train-launch` to its worker bootstrap",
            "",
            "Set for each worker process and removed before the training script runs; never set "
            "them yourself.",
            "",
        ],
        variable_table(BOOTSTRAP_VARIABLES, with_flags=False),
        [
            "",
            "## `train-supervisor status`, `events`, `probe`",
            "",
            "Clients of a running supervisor (and the accelerator probe); the token and TLS "
            "options are those of the job.",
            "",
        ],
        client_flags_table(),
        [
            "",
            "## Names that are not ours",
            "",
            "supervisord sets these in its children's environment; train-supervisor ignores "
            "them without a warning: " + ", ".join(f"`{n}`" for n in foreign) + ".",
        ],
    ]
    return "\n".join(line for part in parts for line in part) + "\n"


def main(argv: Sequence[str], doc: Path = DOC) -> int:
    text = render()
    current = doc.read_text(encoding="utf-8") if doc.exists() else ""
    if "--check" in argv:
        if current != text:
            print(f"{doc} is stale: run `python tools/gen_config_doc.py`")
            return 1
        return 0
    if current != text:
        doc.parent.mkdir(exist_ok=True)
        doc.write_text(text, encoding="utf-8")
        print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
