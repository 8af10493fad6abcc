"""Recovery per framework: train-launch against torchrun, side by side in one run.

Each training stack of the framework matrix (tests/frameworks/scripts/: the
Lightning Trainer, the HF Trainer, a bare Accelerate loop, FSDP2 + DCP, DDP +
torch.compile, megatron-core, DeepSpeed ZeRO-1; 2 ranks, CPU, gloo, no line
for train-launch) runs under both launchers with rank 1 SIGKILLed at step 35
of 200. Measured from the scripts' own logs: time from the kill until every
rank has logged a step again. Also: restarts used beyond the one fault, whether
the survivor kept its PID (or was given a fresh process by the fallback), and
whether the final losses are bitwise equal. torchrun runs with
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 and train-launch's malloc settings (as in
bench/recovery.py).

Step 35 of 200 comes a fraction of a second after a job's first step: the warm
spare may still be importing what the ranks loaded (DeepSpeed: seconds, and its
JIT ops). `--late` kills at step 2000 of 3000 instead, once the spare is warm,
as a fault hours into a job finds it.

    python bench/recovery_frameworks.py   # writes bench/results/recovery_frameworks.{json,md}
    python bench/recovery_frameworks.py --late --frameworks deepspeed,ddp_compile --repeat 3
                                          # ... recovery_frameworks_late.{json,md}
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "frameworks"))
from matrix import FRAMEWORKS, STEPS, Fault, JobRun, run_job
from recovery import TORCHRUN_NOTE
from results_doc import publish

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 0.15
FALLBACK = "survivors get fresh processes"
KILLED_RANK, KILL_STEP = 1, 35
LATE_STEPS, LATE_KILL_STEP = 3000, 2000


def row(framework: str, ours: list[JobRun], theirs: list[JobRun]) -> dict[str, Any]:
    """One framework's figures: medians over the runs, and what every run did."""

    def recovery(run: JobRun) -> float:
        [fault] = run.faults
        assert fault.recovery_s is not None
        return fault.recovery_s

    mine = statistics.median(recovery(r) for r in ours)
    other = statistics.median(recovery(r) for r in theirs)
    return {
        "framework": framework,
        "train_launch_s": mine,
        "torchrun_s": other,
        "ratio": mine / other,
        "train_launch_all_s": [round(recovery(r), 2) for r in ours],
        "torchrun_all_s": [round(recovery(r), 2) for r in theirs],
        "extra_restarts": max(r.restarts - 1 for r in ours),
        "survivor_kept_pid": all(r.faults[0].survivors_kept_pid for r in ours),
        "fallback": any(FALLBACK in r.stderr for r in ours),
        "exit_codes": sorted({r.exit_code for r in ours + theirs}),
        "losses_equal": all(r.final_losses == theirs[0].final_losses for r in ours + theirs),
        "runs": {
            "train_launch": [r.summary() for r in ours],
            "torchrun": [r.summary() for r in theirs],
        },
    }


def survivor(r: dict[str, Any]) -> str:
    if r["survivor_kept_pid"]:
        return "kept its PID"
    return "fresh process (fallback)" if r["fallback"] else "**new PID, no fallback said**"


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        f"Recovery per framework: rank {KILLED_RANK} SIGKILLed at step {report['kill_step']} of "
        f"{report['steps']} (2 ranks, CPU + gloo, "
        f"{report['machine']}, median of {cfg['repeat']}), kill → every rank logged a step "
        f"again, measured {report['date']}. Goal: ≤ {GOAL}× torchrun, 0 restarts beyond the "
        "fault.",
        "",
        "| framework | train-launch | torchrun | ratio | restarts beyond the fault | survivor "
        "| final loss = torchrun's | exit codes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "failed" in r:
            lines.append(f"| {r['framework']} | **did not recover**: {r['failed']} |||||||")
            continue
        lines.append(
            f"| {r['framework']} | **{r['train_launch_s']:.2f} s** | {r['torchrun_s']:.2f} s "
            f"| **{r['ratio']:.2f}×** | {r['extra_restarts']} | {survivor(r)} "
            f"| {'bitwise' if r['losses_equal'] else '**differs**'} | {r['exit_codes']} |"
        )
    lines += [
        "",
        "Every run (s), train-launch / torchrun: "
        + "; ".join(
            f"{r['framework']} {r['train_launch_all_s']} / {r['torchrun_all_s']}"
            for r in report["rows"]
            if "failed" not in r
        ),
        "",
        f"{TORCHRUN_NOTE} Reproduce: `python bench/recovery_frameworks.py{report['argv']}`.",
    ]
    return "\n".join(lines) + "\n"


def reproduce_flags(args: argparse.Namespace) -> str:
    """The flags that shaped the figures (not where they were written), for the Reproduce line."""
    flags = " --late" if args.late else ""
    if args.frameworks != ",".join(FRAMEWORKS):
        flags += f" --frameworks {args.frameworks}"
    return flags + (f" --repeat {args.repeat}" if args.repeat != 1 else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=1, help="runs of each; the median is reported")
    p.add_argument("--timeout", type=float, default=240, help="seconds a job may wait on a step")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated")
    p.add_argument(
        "--late",
        action="store_true",
        help=f"kill at step {LATE_KILL_STEP} of {LATE_STEPS} (the warm spare is warm by then)",
    )
    p.add_argument("--out", help="path stem (default: bench/results/recovery_frameworks[_late])")
    args = p.parse_args()
    name = "recovery_frameworks_late" if args.late else "recovery_frameworks"
    default = RESULTS / name
    steps, kill_step = (LATE_STEPS, LATE_KILL_STEP) if args.late else (STEPS, KILL_STEP)
    fault = Fault(signal.SIGKILL, KILLED_RANK, kill_step)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores",
        "config": vars(args),
        "steps": steps,
        "kill_step": kill_step,
        "argv": reproduce_flags(args),
        "rows": [],
    }
    for framework in args.frameworks.split(","):
        runs: dict[str, list[JobRun]] = {"train-launch": [], "torchrun": []}
        try:
            for _ in range(args.repeat):  # interleaved, so that drift in the machine hits both
                for launcher, found in runs.items():
                    with tempfile.TemporaryDirectory() as work:
                        run = run_job(
                            launcher, framework, (fault,), Path(work), timeout=args.timeout,
                            steps=steps,
                        )  # fmt: skip
                        found.append(run)
            report["rows"].append(row(framework, runs["train-launch"], runs["torchrun"]))
        except AssertionError as failed:  # a job that did not recover: the row says how
            first_line = str(failed).splitlines()[0]
            report["rows"].append({"framework": framework, "failed": f"{launcher}: {first_line}"})
        print(f"{framework}: {report['rows'][-1].get('ratio', 'failed')}", flush=True)
    publish(name, Path(args.out or default), default, report, markdown(report))


if __name__ == "__main__":
    main()
