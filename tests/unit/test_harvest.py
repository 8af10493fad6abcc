"""supervisor/snapshots/harvest.py:harvest_arenas: a rank killed between its copy and its
report (or a
survivor whose report is on its way) still counts for the step its arena holds (real arenas
in tmp, the real Supervisor and JobState); on another pod, what its ranks copied counts when
the leader's Open comes."""

from __future__ import annotations

import asyncio
import itertools
import signal
from pathlib import Path

import torch
from effects import make_spec

from launcher.worker.snapshot_payload import write_state
from supervisor.rpc.service import Supervisor, SupervisorSettings
from supervisor.rules.job import JobState
from supervisor.rules.restart_policy import RestartPolicy
from train_supervisor.arena import RankArena
from train_supervisor.v1 import supervisor_pb2 as pb

RANK_PIDS = {0: 500, 1: 501}


def running_job(snapshot_dir: Path) -> JobState:
    spec = make_spec(spares=0)
    spec.snapshot_dir = str(snapshot_dir)
    job = JobState(
        spec=spec,
        policy=RestartPolicy(max_restarts=3),
        allocate_port=itertools.count(41000).__next__,
    )
    job.attach_launcher()
    for rank, pid in RANK_PIDS.items():
        job.process_started(pid, rank)
        job.worker_attached(pid, rank, spare=False)
    assert job.started
    return job


def save(directory: Path, rank: int, slot: int, step: int, generation: int) -> None:
    with RankArena(directory, rank) as arena:
        write_state(arena, slot, step, generation, {"w": torch.full((4,), float(step))})


def harvest_then_exit(
    tmp_path: Path, harvest: bool, survivor: str = "reported"
) -> tuple[int, list[str]]:
    """Step 6 committed; then rank 1 copies step 7 and dies before reporting it. Rank 0's step
    7 is `survivor`: reported, copied (its report still on its way) or being copied."""

    async def scenario() -> tuple[int, list[str]]:
        sup = Supervisor(SupervisorSettings())
        sup.job = job = running_job(tmp_path)
        for rank in RANK_PIDS:
            save(tmp_path, rank, 0, 6, 0)
            sup.record_saved(job, rank, 6, [6], 100, 0.0)
        assert job.snapshots.committed == 6
        save(tmp_path, 0, 1, 7, 0)
        if survivor == "reported":
            sup.record_saved(job, 0, 7, [6, 7], 100, 0.0)
        elif survivor == "being copied":
            with RankArena(tmp_path, 0) as arena:
                arena.begin_write(1, 7, 0, b"manifest", 16).release()
        save(tmp_path, 1, 1, 7, 0)
        if harvest:
            sup.harvest_arenas(RANK_PIDS[1])
        sup.apply(job.process_exited(RANK_PIDS[1], -9, signal.SIGKILL, "", now=1.0))
        return job.snapshots.committed, [e.kind for e in job.events]

    return asyncio.run(scenario())


def test_a_rank_killed_before_its_report_still_counts_for_the_step_its_arena_holds(
    tmp_path: Path,
) -> None:
    committed, kinds = harvest_then_exit(tmp_path, harvest=True)
    assert committed == 7, "the step every rank held when rank 1 died"
    assert kinds.index("snapshot_harvested") < kinds.index("failure")
    # Without the harvest the job restores one step further back.
    assert harvest_then_exit(tmp_path / "unharvested", harvest=False)[0] == 6


def test_a_survivors_copied_but_unreported_step_counts_and_one_being_copied_does_not(
    tmp_path: Path,
) -> None:
    assert harvest_then_exit(tmp_path / "a", harvest=True, survivor="copied")[0] == 7
    assert harvest_then_exit(tmp_path / "b", harvest=True, survivor="being copied")[0] == 6


class LeaderLink:
    """What this pod tells the leader, in order (the link of supervisor/rpc/peers.py, recorded)."""

    def __init__(self) -> None:
        self.reports: list[pb.PodReport] = []

    def check_spec(self, spec: pb.WorkerSpec) -> None:
        return None

    def launcher_attached(self, spec: pb.WorkerSpec) -> None:
        pass

    def report(self, report: pb.PodReport) -> None:
        self.reports.append(report)

    async def job_status(self, local: pb.JobStatus) -> pb.JobStatus:
        return local


def test_a_pod_counts_what_its_ranks_copied_when_the_leader_opens_the_next_generation(
    tmp_path: Path,
) -> None:
    """Node 1 (ranks 2, 3) runs generation 0; a rank of node 0 dies. Both ranks here had copied
    step 5 without reporting it yet: node 1 says so before it stops the generation."""

    async def scenario() -> list[pb.PodReport]:
        link = LeaderLink()
        sup = Supervisor(SupervisorSettings(), coordination=link)
        spec = make_spec(spares=0, nnodes=2, node_rank=1)
        spec.snapshot_dir = str(tmp_path)
        sup.job = job = JobState(
            leader_remote=True,
            spec=spec,
            policy=RestartPolicy(max_restarts=3),
            allocate_port=lambda: 41000,
        )
        job.attach_launcher()
        for rank, pid in {2: 502, 3: 503}.items():
            job.process_started(pid, rank)
            job.worker_attached(pid, rank, spare=False)
        start = pb.StartGenerationMsg(generation=0, master_addr="node0", master_port=29500)
        sup.on_leader_message(pb.LeaderMessage(start=start))
        assert job.started
        for rank in (2, 3):
            save(tmp_path, rank, 0, 5, 0)
        link.reports.clear()
        opening = pb.OpenGenerationMsg(generation=1, restart_count=1, reason="node 0 rank 1 died")
        sup.on_leader_message(pb.LeaderMessage(open=opening))
        return link.reports

    reports = asyncio.run(scenario())
    kinds = [r.WhichOneof("report") for r in reports]
    assert kinds[0] == "snapshots", kinds  # before anything of the next generation
    assert (reports[0].snapshots.generation, list(reports[0].snapshots.held)) == (0, [5])
