"""The framework matrix: a framework's script under a launcher, faults injected from outside.

The scripts (tests/frameworks/scripts/) know nothing of train-launch. This
harness reads what they log like any script does (a per-rank log file with
the PID on every line, "step N" after each optimizer step) to find a rank's
process and step, signals it from outside (SIGKILL, or SIGSTOP for a hang),
and reads back each rank's exit record (written by an atexit hook).
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from jobs import RunningJob, job_env, train_launch
from recovery import TORCHRUN_ENV

SCRIPTS = Path(__file__).resolve().parent / "scripts"
NPROC = 2
STEPS = 200
CKPT_EVERY = 10
FRAMEWORKS = {
    "lightning": "lightning_trainer.py",
    "hf_trainer": "hf_trainer.py",
    "accelerate": "accelerate_loop.py",
    "fsdp2_dcp": "fsdp2_dcp.py",
    "ddp_compile": "ddp_compile.py",
    "megatron_core": "megatron_tp.py",
    "deepspeed": "deepspeed_zero1.py",
}
# What a framework needs in its environment under either launcher.
FRAMEWORK_ENV = {"deepspeed": {"DS_ACCELERATOR": "cpu"}}
# A SIGSTOPped rank is named by its process state once it is this overdue (default 10 s).
HANG_ENV = {"SUPERVISOR_HANG_FLOOR_S": "3"}
# The job's restart count as each generation opens (a fallback to fresh processes spends none).
RESTART_LINE = re.compile(r"generation_opened: generation \d+ \(restart (\d+)\)")
LOG_LINE = re.compile(r"^(\S+) pid=(\d+) (.*)$")
STEP = re.compile(r"^step (\d+)")
LOSS = re.compile(r"^step \d+ loss (\S+)$")


@dataclass(frozen=True)
class Fault:
    signal: signal.Signals  # SIGKILL, or SIGSTOP: a hang only the supervisor can find
    rank: int
    at_step: int


# Every fault falls between checkpoints (every 10 steps): a rank killed or stopped while it
# writes its part leaves a partial checkpoint (DeepSpeed's `latest` already names it) that the
# script would resume from under any launcher.
SCENARIOS = {
    "kill": (Fault(signal.SIGKILL, 1, 35),),
    "hang": (Fault(signal.SIGSTOP, 1, 35),),
    "three_kills": (
        Fault(signal.SIGKILL, 1, 35),
        Fault(signal.SIGKILL, 0, 85),
        Fault(signal.SIGKILL, 1, 135),
    ),
}


@dataclass(frozen=True)
class LogLine:
    t: float
    pid: int
    text: str

    @property
    def step(self) -> Optional[int]:
        match = STEP.match(self.text)
        return int(match.group(1)) if match else None

    @property
    def loss(self) -> Optional[str]:
        match = LOSS.match(self.text)
        return match.group(1) if match else None


def read_log(out: Path, rank: int) -> list[LogLine]:
    path = out / "logs" / f"rank{rank}.log"
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        match = LOG_LINE.match(raw)
        if match:  # a rank killed mid-write may leave a partial last line
            lines.append(LogLine(float(match.group(1)), int(match.group(2)), match.group(3)))
    return lines


def duplicated_lines(out: Path, rank: int) -> list[str]:
    """Lines written twice: one record through two handlers (the same time to the microsecond)."""
    path = out / "logs" / f"rank{rank}.log"
    counts = collections.Counter(path.read_text().splitlines()) if path.exists() else {}
    return [line for line, n in counts.items() if n > 1]


def exit_records(out: Path, rank: int) -> list[dict[str, Any]]:
    path = out / "atexit" / f"rank{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@dataclass
class FaultOutcome:
    fault: Fault
    t: float  # when the signal was sent
    victim_pid: int
    survivor_pids_before: dict[int, int]
    survivor_pids_after: dict[int, int] = field(default_factory=dict)
    recovery_s: Optional[float] = None  # signal -> every rank logged a step again

    @property
    def survivors_kept_pid(self) -> bool:
        return self.survivor_pids_before == self.survivor_pids_after


@dataclass
class JobRun:
    launcher: str
    framework: str
    exit_code: int
    stderr: str
    faults: list[FaultOutcome]
    final_steps: dict[int, Optional[int]]
    final_losses: dict[int, Optional[str]]  # repr of the final step's loss, as logged
    exit_losses: dict[int, Optional[str]]  # ... as the final process's exit hook recorded it
    exit_records_of_final_pid: dict[int, int]
    duplicated: dict[int, list[str]]
    restarts: int
    wall_s: float

    def summary(self) -> dict[str, Any]:
        return {
            "launcher": self.launcher,
            "framework": self.framework,
            "exit_code": self.exit_code,
            "final_steps": self.final_steps,
            "final_losses": self.final_losses,
            "exit_losses": self.exit_losses,
            "restarts": self.restarts,
            "survivors_kept_pid": [f.survivors_kept_pid for f in self.faults],
            "recovery_s": [f.recovery_s for f in self.faults],
            "exit_records_of_final_pid": self.exit_records_of_final_pid,
            "duplicated_lines": sum(len(v) for v in self.duplicated.values()),
            "wall_s": round(self.wall_s, 1),
        }


def script_args(out: Path, steps: int = STEPS) -> list[str]:
    return ["--out", str(out), "--steps", str(steps), "--ckpt-every", str(CKPT_EVERY)]


def start(
    launcher: str, framework: str, out: Path, max_restarts: int, hang: bool, steps: int = STEPS
) -> RunningJob:
    script = SCRIPTS / FRAMEWORKS[framework]
    extra = FRAMEWORK_ENV.get(framework, {})
    flags = ["--standalone", "--nproc-per-node", str(NPROC), "--max-restarts", str(max_restarts)]
    if launcher == "train-launch":
        env = job_env(**extra, **(HANG_ENV if hang else {}))
        return train_launch(flags, script_args(out, steps), env, script=script)
    args = script_args(out, steps)
    argv = [sys.executable, "-m", "torch.distributed.run", *flags, str(script), *args]
    return RunningJob(argv, job_env(**TORCHRUN_ENV, **extra))


def newest_line(out: Path, rank: int, after: float) -> Optional[LogLine]:
    lines = [line for line in read_log(out, rank) if line.t > after]
    return lines[-1] if lines else None


def stepped_since(out: Path, rank: int, after: float) -> Optional[LogLine]:
    """The rank's first step logged after `after`."""
    return next((x for x in read_log(out, rank) if x.t > after and x.step is not None), None)


def inject(job: RunningJob, out: Path, fault: Fault, after: float) -> FaultOutcome:
    """Wait for the rank to log step `at_step` (since `after`), then signal its process."""

    def reached() -> bool:
        lines = [x for x in read_log(out, fault.rank) if x.t > after and x.step is not None]
        return bool(lines) and max(x.step or 0 for x in lines) >= fault.at_step

    job.wait_for(reached, 600, f"rank {fault.rank} to log step {fault.at_step}")
    survivors = {}
    for rank in range(NPROC):
        line = newest_line(out, rank, after)
        assert line is not None, f"rank {rank} logged nothing"
        survivors[rank] = line.pid
    victim = survivors.pop(fault.rank)
    t = time.time()
    os.kill(victim, fault.signal)
    return FaultOutcome(fault, t, victim, survivors)


def complete(job: RunningJob, out: Path, outcome: FaultOutcome, timeout: float) -> None:
    """Wait until every rank has stepped after the fault; record who runs each rank then."""

    def all_stepped() -> bool:
        return all(stepped_since(out, r, outcome.t) is not None for r in range(NPROC))

    job.wait_for(all_stepped, timeout, f"every rank to step after {outcome.fault}")
    firsts = {r: stepped_since(out, r, outcome.t) for r in range(NPROC)}
    outcome.recovery_s = max(line.t for line in firsts.values() if line) - outcome.t
    outcome.survivor_pids_after = {
        r: line.pid for r, line in firsts.items() if line and r in outcome.survivor_pids_before
    }


def run_job(
    launcher: str,
    framework: str,
    faults: tuple[Fault, ...],
    out: Path,
    max_restarts: int = 3,
    timeout: float = 600,
    steps: int = STEPS,
) -> JobRun:
    started = time.monotonic()
    hang = any(f.signal == signal.SIGSTOP for f in faults)
    job = start(launcher, framework, out, max_restarts, hang, steps)
    outcomes: list[FaultOutcome] = []
    after = 0.0
    try:
        for fault in faults:
            outcome = inject(job, out, fault, after)
            outcomes.append(outcome)
            complete(job, out, outcome, timeout)
            after = outcome.t
        code = job.wait(timeout)
    finally:
        if job.proc.poll() is None:
            job.kill_tree()
    finals: dict[int, Optional[int]] = {}
    losses: dict[int, Optional[str]] = {}
    exit_losses: dict[int, Optional[str]] = {}
    own_records: dict[int, int] = {}
    for rank in range(NPROC):
        last = read_log(out, rank)[-1]
        stepped = [x for x in read_log(out, rank) if x.step is not None and x.pid == last.pid]
        finals[rank] = stepped[-1].step if stepped else None
        losses[rank] = next((x.loss for x in reversed(stepped) if x.loss), None)
        mine = [r for r in exit_records(out, rank) if r["pid"] == last.pid]
        # The newest hook runs first (atexit is LIFO): that is the final run's record.
        exit_losses[rank] = mine[0].get("loss") if mine else None
        own_records[rank] = len(mine)
    restarts = [int(m.group(1)) for m in RESTART_LINE.finditer(job.stderr)]
    return JobRun(
        launcher=launcher,
        framework=framework,
        exit_code=code,
        stderr=job.stderr,
        faults=outcomes,
        final_steps=finals,
        final_losses=losses,
        exit_losses=exit_losses,
        exit_records_of_final_pid=own_records,
        duplicated={r: duplicated_lines(out, r) for r in range(NPROC)},
        restarts=max(restarts, default=0),
        wall_s=time.monotonic() - started,
    )
