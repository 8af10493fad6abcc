"""What the rules hold -> the JobStatus message served by the status API (pure): a pod's
JobState, the job-wide ranks, and the leader's health findings (supervisor/rules/job_health.py)."""

from __future__ import annotations

from collections.abc import Iterable

from supervisor.rpc.state_wire import event_to_wire, record_to_wire, sample_to_wire
from supervisor.rules.anomaly import Finding
from supervisor.rules.job import JobState
from supervisor.rules.job_health import JobHealth
from supervisor.snapshots.commit import RankSnapshots
from train_supervisor.steps import NO_STEP
from train_supervisor.v1 import supervisor_pb2 as pb


def job_status(job: JobState, now: float, leader: str) -> pb.JobStatus:
    status = pb.JobStatus(
        run_id=job.spec.run_id,
        generation=job.generation,
        world_size=job.world_size,
        state=pb.JobState.Name(job.state),
        restart_count=job.restart_count,
        max_restarts=job.spec.max_restarts,
        spare_pids=list(job.spares.idle),
        leader=leader,
        recent_events=[event_to_wire(e) for e in list(job.events)[-20:]],
        committed_step=job.snapshots.committed,
        replicated_step=NO_STEP,  # filled in by supervisor/snapshots/offload_runner.py
        persisted_step=NO_STEP,
        reentry=pb.ReentryMode.Name(job.spec.reentry),
        fresh_processes=job.fresh_processes,
    )
    for slot in sorted(job.ranks.values(), key=lambda s: s.rank):
        age = -1.0 if slot.last_heartbeat is None else max(0.0, now - slot.last_heartbeat)
        snap = job.snapshots.ranks.get(slot.rank, RankSnapshots())
        status.ranks.append(
            pb.RankStatus(
                rank=slot.rank,
                local_rank=slot.local_rank,
                node_rank=job.spec.node_rank,
                pid=slot.pid,
                state=pb.WorkerState.Name(slot.state),
                step=slot.step,
                step_time_s=slot.step_time_s,
                compute_s=slot.compute_s,
                heartbeat_age_s=age,
                process_starts=slot.process_starts,
                saved_step=snap.saved_step,
                committed_step=job.snapshots.committed,
                snapshot_bytes=snap.bytes,
                save_blocking_s=snap.blocking_s,
                restored_step=snap.restored_step,
                restored_from=snap.restored_from,
                replicated_step=NO_STEP,
                persisted_step=NO_STEP,
            )
        )
    if job.failures:
        status.last_failure.CopyFrom(record_to_wire(job.failures[-1]))
    return status


def job_wide_ranks(leader: pb.JobStatus, others: Iterable[pb.RankStatus]) -> list[pb.RankStatus]:
    """The leader's ranks and the followers' last reported ones, by rank. Commits and offload
    rounds are job-wide and decided by the leader; a follower learns them with the next commit
    and reports its ranks a beat later, so the leader's steps replace the follower's."""
    ranks = []
    for reported in [*leader.ranks, *others]:
        rank = pb.RankStatus()
        rank.CopyFrom(reported)
        rank.committed_step = leader.committed_step
        rank.replicated_step = leader.replicated_step
        rank.persisted_step = leader.persisted_step
        ranks.append(rank)
    return sorted(ranks, key=lambda r: r.rank)


def finding_to_wire(finding: Finding, since_unix: float) -> pb.Finding:
    return pb.Finding(
        kind=finding.kind,
        node_rank=finding.node_rank,
        since_unix=since_unix,
        windows=finding.windows,
        score=finding.score,
        summary=finding.summary(),
        values={d.metric: d.value for d in finding.deviations},
        medians={d.metric: d.median for d in finding.deviations},
        slowdown=finding.slowdown,
    )


def health_status(health: JobHealth, status: pb.JobStatus) -> None:
    """The leader's findings and every pod's newest sample, in `status`."""
    del status.findings[:], status.samples[:]
    for finding in sorted(health.findings.values(), key=lambda f: f.node_rank):
        status.findings.append(finding_to_wire(finding, health.since_unix(finding)))
    status.samples.extend(sample_to_wire(health.samples[n]) for n in sorted(health.samples))
