"""The fuzz gate's figures: hostile calls against a running two-pod job (issue P7, item 3).

tests/e2e/test_fuzz_gate.py asserts the gate in CI; this runs the same gate
(tests/e2e/fuzz.py: two `train-supervisor serve` sidecars and two `train-launch`
on loopback, toy DDP on 4 ranks with --snapshot and per-step state hashes, and an
untouched standalone run to compare with) and writes what it measured: calls sent,
calls refused by status code, state changes (goal 0), per-step states unlike the
untouched run's (goal 0), and log bytes.

    python bench/fuzz_gate.py  # writes bench/results/fuzz_gate.{json,md}
"""

from __future__ import annotations

import argparse
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from fuzz import GateResult, run_gate
from results_doc import publish

RESULTS = Path(__file__).resolve().parent / "results" / "fuzz_gate"


def report_of(result: GateResult, args: argparse.Namespace) -> dict[str, Any]:
    tally = result.tally
    refused = {code: n for code, n in sorted(tally.by_code.items()) if code != "OK"}
    return {
        "calls_sent": tally.sent,
        "calls_answered_ok": tally.by_code.get("OK", 0),
        "calls_refused_by_code": refused,
        "calls_by_token": dict(sorted(tally.by_token.items())),
        "rpcs_covered": len(tally.by_rpc),
        "calls_without_token_not_refused": tally.unauthenticated_ok,
        "server_errors": tally.server_errors,
        "transport_resets_of_answered_client_streams": tally.transport_resets,
        "odd_answers": dict(tally.odd),
        "state_changes": len(result.state_changes),
        "state_change_details": result.state_changes,
        "per_step_states_compared": result.compared_states,
        "per_step_states_unlike_untouched_run": result.mismatched_states,
        "exit_codes": result.exits,
        "sidecar_log_bytes": result.sidecar_log_bytes,
        "launcher_log_bytes": result.launcher_log_bytes,
        "fuzz_seconds": round(tally.elapsed_s, 1),
        "settings": {
            "count": args.count,
            "rate": args.rate,
            "steps": args.steps,
            "step_sleep_s": args.step_sleep,
        },
    }


# Answers that are not the server refusing: the fuzzer's own doing, or its client's.
NOT_REFUSALS = {
    "OK": "answered (read-only calls, or harmless)",
    "CANCELLED": "streams the fuzzer dropped itself",
    "DEADLINE_EXCEEDED": "open streams held to the fuzzer's 3 s deadline",
    "INTERNAL": "client streams the server had answered, misreported by grpc.aio (grpc#36066)",
}


def markdown(report: dict[str, Any]) -> str:
    codes = report["calls_refused_by_code"]
    refused = {c: n for c, n in codes.items() if c not in NOT_REFUSALS}
    others = {
        "OK": report["calls_answered_ok"],
        **{c: n for c, n in codes.items() if c in NOT_REFUSALS},
    }
    lines = [
        "# Fuzz gate: hostile calls against a running two-pod job",
        "",
        "| figure | value |",
        "|---|---|",
        f"| calls sent (every RPC of every service: {report['rpcs_covered']}) "
        f"| {report['calls_sent']} in {report['fuzz_seconds']} s |",
        f"| by token | {report['calls_by_token']} |",
        f"| refused by the server | {sum(refused.values())}: "
        + ", ".join(f"{code} {n}" for code, n in sorted(refused.items()))
        + " |",
        *(f"| {NOT_REFUSALS[code]} | {code} {n} |" for code, n in others.items() if n),
        f"| calls without the token not refused | {report['calls_without_token_not_refused']} |",
        f"| server errors (UNKNOWN, or INTERNAL from a servicer) | {report['server_errors']} |",
        f"| state changes (goal 0) | {report['state_changes']} |",
        f"| per-step state hashes unlike the untouched run "
        f"| {report['per_step_states_unlike_untouched_run']} "
        f"of {report['per_step_states_compared']} |",
        f"| launcher exit codes | {report['exit_codes']} |",
        f"| sidecar log bytes (whole run; the test's limit: 256 KiB each) "
        f"| {report['sidecar_log_bytes']} |",
        "",
        "Command: `python bench/fuzz_gate.py` (tests/e2e/fuzz.py; "
        "CI: tests/e2e/test_fuzz_gate.py). Two cores shared with other work.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_200)
    parser.add_argument("--rate", type=float, default=200.0, help="calls a second")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--step-sleep", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = Path("/tmp") / f"fuzz-gate-{uuid.uuid4().hex[:8]}"
    shm = Path("/dev/shm") / f"ts-fuzz-{uuid.uuid4().hex[:12]}"
    work.mkdir()
    try:
        result = run_gate(
            work, shm, count=args.count, rate=args.rate, steps=args.steps,
            step_sleep_s=args.step_sleep, time_limit_s=150,
        )  # fmt: skip
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    report = report_of(result, args)
    text = markdown(report)
    publish("fuzz_gate", args.out, RESULTS, report, text)


if __name__ == "__main__":
    main()
