"""In-memory snapshot stall: how long save() blocks training, against memcpy and torch.save.

One train-launch job (--standalone, 1 rank, no spare) runs bench/snapshot_stall_worker.py on a
model of nn.Linear layers whose params + Adam state make --size-gb (fp32, CPU). In that one
process it measures: the memcpy floor (copy_ of every state tensor into preallocated /dev/shm
memory), torch.save of the same state dict to local disk, how long launcher/worker/snapshot.py's
save() blocks the loop with and without compute to hide the copy, the step time of a loop that
saves every step against one that does not, and the arena's memory.

    python bench/snapshot_stall.py      # results: bench/results/, docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from results_doc import publish

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "snapshot_stall_worker.py"
DEFAULT_OUT = REPO / "bench" / "results" / "snapshot_stall"
GB = 1e9
# The targets.
FLOOR_FACTOR = 1.2
TORCH_SAVE_FACTOR = 10.0
SLOWDOWN = 0.05


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-gb", type=float, default=1.0, help="params + Adam state, GB (1e9 B)")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--batch", type=int, default=128, help="rows per forward+backward")
    p.add_argument("--repeats", type=int, default=5, help="of each blocked-time measurement")
    p.add_argument("--steps", type=int, default=30, help="timed steps with, and without, saves")
    p.add_argument("--wait-idle", type=float, default=600, help="max seconds to wait for idle")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p.parse_args()


def run_worker(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    shm = Path("/dev/shm") / f"ts-bench-{uuid.uuid4().hex[:12]}"  # this run's arena only
    env = dict(os.environ, TRAIN_SUPERVISOR_SNAPSHOT_DIR=str(shm))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    result = work / "result.json"
    argv = [
        *(sys.executable, "-m", "launcher.launch.main", "--standalone", "--nproc-per-node", "1"),
        *("--warm-spares", "0", "--supervisor-port", "0", str(WORKER)),
        *("--size-gb", str(args.size_gb), "--hidden", str(args.hidden), "--batch", str(args.batch)),
        *("--repeats", str(args.repeats), "--steps", str(args.steps)),
        *("--save-dir", str(work), "--result", str(result)),
    ]
    try:
        code = subprocess.run(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL).returncode
        if code != 0 or not result.exists():
            sys.exit(f"snapshot_stall: the job exited {code} without a result")
        report = json.loads(result.read_text())
        report["arena_removed_on_success"] = not shm.exists()
        return report
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def busy_cpu_s() -> tuple[float, float]:
    """CPU seconds the whole machine spent busy, and stolen by the hypervisor (/proc/stat)."""
    user, nice, system, _, _, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split()[1:9]
    )
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for descendants (the job)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def wait_until_idle(limit_s: float, cores: int) -> float:
    """Wait (up to limit_s) for a 5 s window with other processes below 10% of the machine."""
    began = time.monotonic()
    while True:
        before = busy_cpu_s()[0]
        time.sleep(5)
        share = (busy_cpu_s()[0] - before) / (5 * cores)
        if share < 0.1 or time.monotonic() - began > limit_s:
            return share


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "?")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPU cores ({cpu}), {ram:.0f} GiB RAM, Linux {platform.release()}"


def summarize(w: dict[str, Any]) -> dict[str, Any]:
    """The headline figures and the targets, from the worker's raw measurements."""
    floor = w["floor"]["shm_median_s"]
    ours = w["no_overlap"]["blocked_s"]
    saved = w["torch_save"]["median_s"]
    state_gb = w["state_bytes"] / GB
    targets = {
        f"no_overlap <= {FLOOR_FACTOR}x floor": ours <= FLOOR_FACTOR * floor,
        f"torch.save >= {TORCH_SAVE_FACTOR:g}x no_overlap": saved >= TORCH_SAVE_FACTOR * ours,
    }
    for run in w["steady"]:
        targets[f"slowdown <= {SLOWDOWN:.0%}, {run['threads']} threads"] = (
            run["slowdown"] <= SLOWDOWN
        )
    return {
        "state_gb": state_gb,
        "ours_over_floor": ours / floor,
        "torch_save_over_ours": saved / ours,
        "torch_save_over_ours_overlapped": saved / max(w["overlap"]["blocked_s"], 1e-9),
        "arena_bytes_per_state_gb": w["arena"]["bytes"] / state_gb,
        "rss_increase_bytes": {
            k: w["memory_after"][k] - w["memory_before"][k] for k in w["memory_before"]
        },
        "targets_met": targets,
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def yes(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def steady_rows(w: dict[str, Any], steps: int) -> list[str]:
    rows = []
    for run in w["steady"]:
        why = "all cores, torch's default" if run["threads"] == w["threads"] else "a core left"
        rows.append(
            f"| loop saving every step vs not, training on {run['threads']} thread(s) ({why}); "
            f"medians of {steps} steps each, alternating blocks | {ms(run['saving_step_s'])} vs "
            f"{ms(run['plain_step_s'])} (blocked {ms(run['saving_blocked_s'])}): "
            f"**{run['slowdown']:+.1%}** | ≤ {SLOWDOWN:.0%} {yes(run['slowdown'] <= SLOWDOWN)} |"
        )
    return rows


def notes(w: dict[str, Any]) -> list[str]:
    """The paragraph under the table: what save() does inline, every run, where time went."""
    no, ov = w["no_overlap"], w["overlap"]
    out = [
        f"save() clones {w['cloned_in_save']['tensors']} tensors "
        f"({w['cloned_in_save']['bytes']} B) the optimizer does not own and pickles a "
        f"{w['manifest_bytes']} B manifest; the writer thread copies the rest.",
        f"Every (a) run (ms): {[round(x * 1000, 1) for x in no['all_blocked_s']]}; "
        f"every (b) run (ms): {[round(x * 1000, 1) for x in ov['all_blocked_s']]}.",
    ]
    for run in w["steady"]:
        extra = run["saving_step_s"] - run["plain_step_s"]
        if run["threads"] == w["threads"]:  # every core trains: the writer's CPU is theirs
            core_time = run["threads"] * run["plain_step_s"]
            copy_share = w["floor"]["shm_median_s"] / core_time
            out.append(
                f"With training on all {run['threads']} cores, the writer's CPU comes out of "
                f"training's: one memcpy of the state is {copy_share:.1%} of the cores' time in "
                f"a plain step (the least any every-step copy can add there; the target is "
                f"{SLOWDOWN:.0%}), the writer's whole work per save (copy, CRC-32C, report) "
                f"{w['writer']['cycle_s'] / core_time:.1%}."
            )
        if run["saving_blocked_s"] < extra / 2:  # the loop was slowed, not blocked
            out.append(
                f"With {run['threads']} training thread(s) the loop waited only "
                f"{ms(run['saving_blocked_s'])} per step for snapshots; the rest of the "
                f"{ms(extra)} is the writer thread's work beside training (CPU and memory "
                "bandwidth)."
            )
    out.append(
        "The RSS increase counts the arena's mapped pages as shared memory (they live in "
        "/dev/shm, not in the process). Reproduce: `python bench/snapshot_stall.py`."
    )
    return out


def markdown(report: dict[str, Any]) -> str:
    w, s, cfg = report["worker"], report["summary"], report["config"]
    no, ov, wr, fl = w["no_overlap"], w["overlap"], w["writer"], w["floor"]
    met = list(s["targets_met"].values())
    gb = s["state_gb"]
    mem = {k: v / 2**20 for k, v in s["rss_increase_bytes"].items()}
    lines = [
        f"In-memory snapshot stall for {gb:.2f} GB of training state ({w['layers']} × "
        f"nn.Linear({w['hidden']}, {w['hidden']}) params + Adam exp_avg/exp_avg_sq, fp32, "
        f"{w['state_tensors']} tensors; 1 rank on CPU, torch {w['torch']}, {w['threads']} "
        f"intra-op threads), {report['machine']}, measured {report['date']}. Medians of "
        f"{cfg['repeats']} repeats unless said. Other processes used "
        f"{report['others_cpu_share']:.0%} of the machine's CPU during the run, the "
        f"hypervisor stole {report['steal_share']:.0%}.",
        "",
        "| measurement | value | target |",
        "|---|---|---|",
        f"| memcpy floor: copy_ of every state tensor into preallocated, populated /dev/shm "
        f"memory | {ms(fl['shm_median_s'])} ({gb / fl['shm_median_s']:.1f} GB/s) | |",
        f"| the same copy into plain preallocated CPU tensors | {ms(fl['ram_median_s'])} | |",
        f"| torch.save of the same state dict to local disk (/tmp, no fsync; median of "
        f"{len(w['torch_save']['all_s'])}, after one untimed save) | "
        f"{ms(w['torch_save']['median_s'])} (an os.fsync after it: "
        f"{ms(w['torch_save']['fsync_s'])} more, not counted) | |",
        f"| **(a) ours, no overlap**: save() then at once optimizer.step(); blocked = inside "
        f"save() + pre-step hook wait | **{ms(no['blocked_s'])}** (medians of the parts: "
        f"save() {ms(no['save_s'])}, hook wait {ms(no['hook_wait_s'])}) | |",
        f"| (a) ÷ memcpy floor | **{s['ours_over_floor']:.2f}×** | ≤ {FLOOR_FACTOR}× "
        f"{yes(met[0])} |",
        f"| torch.save ÷ (a) | **{s['torch_save_over_ours']:.1f}×** | ≥ {TORCH_SAVE_FACTOR:g}× "
        f"{yes(met[1])} |",
        f"| (b) ours, a forward+backward (batch {w['batch']}: {ms(w['compute_s'])} alone = "
        f"{w['compute_s'] / fl['shm_median_s']:.1f}× the floor; "
        f"{ms(ov['compute_s'])} beside the writer) between save() and step(); blocked | "
        f"**{ms(ov['blocked_s'])}** (save() {ms(ov['save_s'])}, hook wait "
        f"{ms(ov['hook_wait_s'])}) "
        f"(torch.save ÷ (b): {s['torch_save_over_ours_overlapped']:.0f}×) | |",
        f"| the writer thread's work per save, nothing else running: save() → reported "
        f"(copy, CRC-32C, header, RPC) | {ms(wr['cycle_s'])}, of which CRC-32C of the payload "
        f"{ms(wr['crc_s'])} | |",
        *steady_rows(w, cfg["steps"]),
        f"| arena in /dev/shm ({w['arena']['files']} slot files) per GB of state | "
        f"{s['arena_bytes_per_state_gb'] / GB:.2f} GB | |",
        f"| worker RSS increase with snapshots on (anonymous / shared memory) | "
        f"{mem['VmRSS']:.0f} MiB ({mem['RssAnon']:.0f} / {mem['RssShmem']:.0f} MiB) | |",
        "",
        " ".join(notes(w)),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse()
    cores = os.cpu_count() or 1
    idle_share = wait_until_idle(args.wait_idle, cores)
    (busy, steal), own, began = busy_cpu_s(), own_cpu_s(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ts-bench-") as work:
        worker = run_worker(args, Path(work))
    (busy_end, steal_end), wall = busy_cpu_s(), time.monotonic() - began
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        # Other work on the machine skews every figure: how much of it there was.
        "others_cpu_share_before": idle_share,
        "others_cpu_share": (busy_end - busy - (own_cpu_s() - own)) / (wall * cores),
        "steal_share": (steal_end - steal) / (wall * cores),
        "config": vars(args),
        "worker": worker,
    }
    report["summary"] = summarize(worker)
    text = markdown(report)
    publish("snapshot_stall", Path(args.out), DEFAULT_OUT, report, text)


if __name__ == "__main__":
    main()
