"""Steady step time with no fault: train-launch ÷ torchrun, interleaved runs, medians.

Both launch bench/steady_step_worker.py (2 ranks, gloo, CPU, plain DDP) on a module-heavy
eager model (12 nn.TransformerEncoderLayer, d_model 128, batch 4x16: ~130 module calls per
forward) and on the same model under torch.compile. Runs of the launchers alternate (their
order rotates each round), so drift in the machine's load hits all of them alike; each run's
figure is the median of its measured steps, each launcher's the median over its runs, and
the ratio is also taken round by round (median of the per-round ratios). Rank 0's CPU time per
step (all its threads) is reported too: on a shared machine it moves far less with the
load than wall time does. Steady state: steps
are measured once the launcher's own processes are idle. A third variant,
train-launch --time-forward on, shows what the global module forward hooks cost (they were
on by default before). torchrun runs with bench/recovery.py's TORCHRUN_ENV.

    python bench/steady_step.py         # writes bench/results/steady_step.{json,md}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import psutil
from jobs import RunningJob, job_env
from recovery import TORCHRUN_ENV
from results_doc import publish

from launcher.launch.processes import ENV_RANK

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "steady_step_worker.py"
DEFAULT_OUT = REPO / "bench" / "results" / "steady_step"
GOAL = 1.01
# Measuring starts when the launcher's own processes used less than this many cores over the
# window (or after the timeout: then the run is marked not quiet).
QUIET_CORES = 0.05
QUIET_WINDOW_S = 3.0
QUIET_TIMEOUT_S = 180.0
NPROC = 2
# (name, argv before the script); train-launch with its defaults (one warm spare included).
LAUNCHERS: tuple[tuple[str, list[str]], ...] = (
    ("torchrun", [sys.executable, "-m", "torch.distributed.run", "--standalone"]),
    ("train-launch", [sys.executable, "-m", "launcher.launch.main", "--standalone"]),
    (
        "train-launch --time-forward on",
        [sys.executable, "-m", "launcher.launch.main", "--standalone", "--time-forward", "on"],
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


class TreeCpu:
    """CPU seconds of a job's processes, split into the ranks' and the launcher's own (the
    launcher or torchrun's agent, a warm spare, any helper process)."""

    def __init__(self, job: RunningJob) -> None:
        self.job = job
        self.seen: dict[int, tuple[bool, float]] = {}  # pid -> (a rank, CPU seconds)

    def _is_rank(self, proc: psutil.Process) -> bool:
        if str(WORKER) not in " ".join(proc.cmdline()):
            return False
        return proc.environ().get(ENV_RANK) != "-1"  # a warm spare's, at its exec

    def sample(self) -> tuple[float, float]:
        """(ranks', launcher's own) CPU seconds so far, the exited processes' included."""
        procs = list(self.job.children())
        with contextlib.suppress(psutil.Error):  # the job may have ended already
            procs.append(psutil.Process(self.job.proc.pid))
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                rank = self.seen[proc.pid][0] if proc.pid in self.seen else self._is_rank(proc)
                self.seen[proc.pid] = (rank, times.user + times.system)
        ranks = sum(cpu for rank, cpu in self.seen.values() if rank)
        return ranks, sum(cpu for rank, cpu in self.seen.values() if not rank)


def run_once(
    launcher: list[str], name: str, model: str, args: argparse.Namespace
) -> dict[str, float]:
    """One job: the median of rank 0's measured step times, and the launcher's own CPU use
    (cores) while they were measured. Measuring starts once the launcher's own processes are
    idle (a warm spare has imported what it needs) and the worker's warm-up is over."""
    with tempfile.TemporaryDirectory(prefix="ts-steady-") as work:
        out, go = Path(work) / "steps.json", Path(work) / "go"
        extra = ["--supervisor-port", "0"] if "launcher.launch.main" in launcher else []
        argv = [*launcher, *extra, "--nproc-per-node", str(NPROC), str(WORKER), model, str(out)]
        argv += ["--warmup", str(args.warmup), "--warmup-s", str(args.warmup_s)]
        argv += ["--go-file", str(go), "--steps", str(args.steps)]
        env = job_env(**TORCHRUN_ENV) if name == "torchrun" else job_env()
        job = RunningJob(argv, env)
        cpu = TreeCpu(job)
        history: list[tuple[float, float]] = []  # (time, launcher's own CPU seconds)
        waited_from = time.monotonic()
        at_go = (0.0, 0.0, 0.0)
        while job.proc.poll() is None and not out.exists():
            now = time.monotonic()
            ranks_cpu, own_cpu = cpu.sample()
            history.append((now, own_cpu))
            recent = [(t, c) for t, c in history if t >= now - QUIET_WINDOW_S]
            quiet = (
                now - history[0][0] >= QUIET_WINDOW_S
                and (recent[-1][1] - recent[0][1]) / QUIET_WINDOW_S < QUIET_CORES
            )
            if not go.exists() and (quiet or now - waited_from > QUIET_TIMEOUT_S):
                go.touch()
                at_go = (now, ranks_cpu, own_cpu)
            time.sleep(0.5)
        ranks_cpu, own_cpu = cpu.sample()
        code = job.wait(900)
        if code != 0:
            raise SystemExit(f"{name} {model} exited {code}:\n{job.stderr[-4000:]}")
        record = json.loads(out.read_text())
    elapsed = max(time.monotonic() - at_go[0], 1e-9)
    return {
        "step_s": statistics.median(record["step_s"]),
        "cpu_step_s": record["cpu_step_s"],
        "own_cores": (own_cpu - at_go[2]) / elapsed,
        "rank_cores": (ranks_cpu - at_go[1]) / elapsed,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        model: {name: [] for name, _ in LAUNCHERS} for model in args.models.split(",")
    }
    for round_index in range(args.rounds):
        for model, by_launcher in runs.items():
            shift = round_index % len(LAUNCHERS)  # rotate who goes first
            for name, launcher in LAUNCHERS[shift:] + LAUNCHERS[:shift]:
                run = run_once(launcher, name, model, args)
                by_launcher[name].append(run)
                line = f"round {round_index} {model:8} {name:32} {run['step_s'] * 1000:8.2f} ms"
                line += f", CPU {run['cpu_step_s'] * 1000:.2f} ms/step"
                print(f"{line}, launcher's own {run['own_cores']:.3f} cores", flush=True)
    report: dict[str, Any] = {"models": {}}
    for model, by_launcher in runs.items():
        base = [run["step_s"] for run in by_launcher["torchrun"]]
        base_cpu = [run["cpu_step_s"] for run in by_launcher["torchrun"]]
        rows = {}
        for name, results in by_launcher.items():
            medians = [run["step_s"] for run in results]
            per_round = [ours / theirs for ours, theirs in zip(medians, base)]
            cpu = [run["cpu_step_s"] for run in results]
            rows[name] = {
                "median_step_ms": round(statistics.median(medians) * 1000, 3),
                "run_medians_ms": [round(m * 1000, 3) for m in medians],
                "ratio_of_medians": round(statistics.median(medians) / statistics.median(base), 4),
                "median_round_ratio": round(statistics.median(per_round), 4),
                "median_cpu_step_ms": round(statistics.median(cpu) * 1000, 3),
                "run_cpu_step_ms": [round(c * 1000, 3) for c in cpu],
                "cpu_ratio_of_medians": round(
                    statistics.median(cpu) / statistics.median(base_cpu), 4
                ),
                "own_cores": round(statistics.median(run["own_cores"] for run in results), 4),
                "rank_cores": round(statistics.median(run["rank_cores"] for run in results), 4),
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
        "| ÷ torchrun (per round, median) | rank 0's CPU per step (ms) | ÷ torchrun (CPU) "
        "| launcher's own CPU (cores) | ranks' CPU (cores) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, rows in report["models"].items():
        for name, row in rows.items():
            lines.append(
                f"| {model} | {name} | {row['median_step_ms']:.2f} | "
                f"{row['ratio_of_medians']:.3f} | {row['median_round_ratio']:.3f} | "
                f"{row['median_cpu_step_ms']:.2f} | {row['cpu_ratio_of_medians']:.3f} | "
                f"{row['own_cores']:.3f} | {row['rank_cores']:.2f} |"
            )
    lines += [
        "",
        "eager: 12 nn.TransformerEncoderLayer (d_model 128, 4 heads, batch 4×16) in DDP; "
        "compiled: the same under torch.compile (inductor). train-launch with its defaults "
        "(one warm spare). torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 and the malloc "
        "settings train-launch gives its workers. Steps are measured once the launcher's own "
        f"processes (train-launch with its embedded supervisor and warm spare; torchrun's agent) "
        f"use < {QUIET_CORES} cores over {QUIET_WINDOW_S:.0f} s (the spare has imported what "
        "rank 0 loaded); their CPU use while the steps are measured is in the table.",
        "",
        f"Reproduce: `python bench/steady_step.py --rounds {report['rounds']}`.",
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
