"""Steady step time with no fault: train-launch ÷ torchrun, interleaved runs, medians.

Both launch bench/steady_step_worker.py (2 ranks, gloo, CPU, plain DDP) on a module-heavy
eager model (12 nn.TransformerEncoderLayer, d_model 128, batch 4x16: ~130 module calls per
forward) and on the same model under torch.compile. Runs of the launchers alternate (their
order rotates each round), so drift in the machine's load hits all of them alike; each run's
figure is the median of its measured steps, each launcher's the median over its runs, and
the ratio is also taken round by round (median of the per-round ratios). A third variant,
train-launch --time-forward on, shows what the global module forward hooks cost (they were
on by default before). torchrun runs with bench/recovery.py's TORCHRUN_ENV.

    python bench/steady_step.py         # writes bench/results/steady_step.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from jobs import RunningJob, job_env
from readme_quote import publish
from recovery import TORCHRUN_ENV

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "steady_step_worker.py"
DEFAULT_OUT = REPO / "bench" / "results" / "steady_step"
GOAL = 1.01
NPROC = 2
# (name, argv before the script); train-launch with its defaults (one warm spare included).
LAUNCHERS: tuple[tuple[str, list[str]], ...] = (
    ("torchrun", [sys.executable, "-m", "torch.distributed.run", "--standalone"]),
    ("train-launch", [sys.executable, "-m", "launcher.main", "--standalone"]),
    (
        "train-launch --time-forward on",
        [sys.executable, "-m", "launcher.main", "--standalone", "--time-forward", "on"],
    ),
)
MODELS = ("eager", "compiled")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=30, help="steps before measuring, at least")
    p.add_argument(
        "--warmup-s",
        type=float,
        default=15.0,
        help="seconds of steps before measuring, at least (the warm spare's imports end)",
    )
    p.add_argument("--steps", type=int, default=150, help="measured steps per run")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p.parse_args()


def run_once(launcher: list[str], name: str, model: str, args: argparse.Namespace) -> float:
    """One job; the median of rank 0's measured step times."""
    with tempfile.TemporaryDirectory(prefix="ts-steady-") as work:
        out = Path(work) / "steps.json"
        extra = ["--supervisor-port", "0"] if "launcher.main" in launcher else []
        argv = [*launcher, *extra, "--nproc-per-node", str(NPROC), str(WORKER), model, str(out)]
        argv += ["--warmup", str(args.warmup), "--warmup-s", str(args.warmup_s)]
        argv += ["--steps", str(args.steps)]
        env = job_env(**TORCHRUN_ENV) if name == "torchrun" else job_env()
        job = RunningJob(argv, env)
        code = job.wait(900)
        if code != 0:
            raise SystemExit(f"{name} {model} exited {code}:\n{job.stderr[-4000:]}")
        step_s: list[float] = json.loads(out.read_text())["step_s"]
    return statistics.median(step_s)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, dict[str, list[float]]] = {
        model: {name: [] for name, _ in LAUNCHERS} for model in args.models.split(",")
    }
    for round_index in range(args.rounds):
        for model, by_launcher in runs.items():
            shift = round_index % len(LAUNCHERS)  # rotate who goes first
            for name, launcher in LAUNCHERS[shift:] + LAUNCHERS[:shift]:
                median = run_once(launcher, name, model, args)
                by_launcher[name].append(median)
                print(
                    f"round {round_index} {model:8} {name:32} {median * 1000:8.2f} ms", flush=True
                )
    report: dict[str, Any] = {"models": {}}
    for model, by_launcher in runs.items():
        base = by_launcher["torchrun"]
        rows = {}
        for name, medians in by_launcher.items():
            per_round = [ours / theirs for ours, theirs in zip(medians, base)]
            rows[name] = {
                "median_step_ms": round(statistics.median(medians) * 1000, 3),
                "run_medians_ms": [round(m * 1000, 3) for m in medians],
                "ratio_of_medians": round(statistics.median(medians) / statistics.median(base), 4),
                "median_round_ratio": round(statistics.median(per_round), 4),
            }
        report["models"][model] = rows
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Steady step time with no fault, {NPROC} ranks gloo CPU ({report['cores']} cores, load "
        f"average {report['load_before']:.1f} before, {report['load_after']:.1f} after), "
        f"{report['rounds']} interleaved rounds of {report['steps']} measured steps after "
        f"≥ {report['warmup']} warm-up steps and ≥ {report['warmup_s']:.0f} s, measured "
        f"{report['date']}. Goal: train-launch ÷ torchrun ≤ {GOAL}.",
        "",
        "| model | launcher | median step (ms) | ÷ torchrun (medians) "
        "| ÷ torchrun (per round, median) |",
        "|---|---|---|---|---|",
    ]
    for model, rows in report["models"].items():
        for name, row in rows.items():
            lines.append(
                f"| {model} | {name} | {row['median_step_ms']:.2f} | "
                f"{row['ratio_of_medians']:.3f} | {row['median_round_ratio']:.3f} |"
            )
    lines += [
        "",
        "eager: 12 nn.TransformerEncoderLayer (d_model 128, 4 heads, batch 4×16) in DDP; "
        "compiled: the same under torch.compile (inductor). train-launch with its defaults "
        "(one warm spare). torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 and the malloc "
        "settings train-launch gives its workers.",
        "",
        "Reproduce: `python bench/steady_step.py`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse()
    load_before = os.getloadavg()[0]
    report = measure(args)
    report.update(
        cores=os.cpu_count(),
        load_before=load_before,
        load_after=os.getloadavg()[0],
        rounds=args.rounds,
        steps=args.steps,
        warmup=args.warmup,
        warmup_s=args.warmup_s,
        date=time.strftime("%Y-%m-%d"),
    )
    publish("steady_step", Path(args.out), DEFAULT_OUT, report, markdown(report))


if __name__ == "__main__":
    main()
