"""The thread that carries our Events, node condition and taint to the API server.

`job_event` runs on the supervisor's event loop and never waits: it maps the
job event (notes.py), aggregates and rate-limits it (correlator.py) and puts
the requests on a bounded queue; a full queue drops (counted). One thread
sends them with the official client. A refusal (403), conflict (409),
throttling (429), server error (5xx) or a hang (cut at SUPERVISOR_KUBE_TIMEOUT_S)
costs that thread only: each is counted for /metrics and logged once per call
and outcome, not per event.
"""

from __future__ import annotations

import collections
import datetime
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, Union

from supervisor.outputs.kube.correlator import (
    CreateEvent,
    Dropped,
    EventCorrelator,
    PatchEvent,
)
from supervisor.outputs.kube.notes import NodeFault, failure_of, node_fault_of, notes_for
from supervisor.outputs.kube.outcomes import OK, outcome_of_status
from supervisor.outputs.kube.settings import KubeConfig
from supervisor.rules.job import JobEvent, JobState
from supervisor.rules.token_bucket import TokenBucket

log = logging.getLogger("train_supervisor")
COMPONENT = "train-supervisor"
CONDITION_TYPE = "TrainSupervisorHardwareFault"
TAINT_KEY = "train-supervisor/hardware-fault"
TAINT_EFFECT = "NoSchedule"
KUBE_FLUSH_S = 3.0  # at shutdown, the queued Events (the verdict) get this long


@dataclass(frozen=True)
class MarkNode:
    fault: NodeFault


Work = Union[CreateEvent, PatchEvent, MarkNode]


def _time(seconds: float) -> datetime.datetime:
    # metav1.Time has whole seconds; RFC 3339 in UTC.
    return datetime.datetime.fromtimestamp(int(seconds), tz=datetime.timezone.utc)


class KubeReporter:
    """Owns the queue, the thread and the counters; `api` is a kubernetes CoreV1Api."""

    def __init__(
        self, config: KubeConfig, api: Any, clock: Callable[[], float] = time.time
    ) -> None:
        assert config.pod is not None and config.api is not None
        self.config, self.pod, self.api, self.clock = config, config.pod, api, clock
        self.timeout_s = config.api.timeout_s
        self.correlator = EventCorrelator(
            config.pod.name, TokenBucket(rate=1.0 / config.refill_s, burst=config.burst)
        )
        self.queue: queue.Queue[Optional[Work]] = queue.Queue(maxsize=config.queue_size)
        self._lock = threading.Lock()
        self._requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._dropped: collections.Counter[str] = collections.Counter()
        self._logged: set[tuple[str, str]] = set()
        self._marked = False  # the node gets its condition once
        self._thread = threading.Thread(target=self._run, name="kube-reporter", daemon=True)
        self._thread.start()

    # ------------------------------------------------------ the event loop's side
    def job_event(self, event: JobEvent, job: JobState) -> None:
        """Never blocks: at most a few dict operations and a put_nowait; never raises
        (a bug here must not stop the supervisor's loop: it is counted and logged once)."""
        try:
            self._job_event(event, job)
        except Exception:
            self._drop("error")
            if self._first(("job_event", "error")):
                log.exception("Kubernetes Events: could not map a job event (%s)", event.kind)

    def _job_event(self, event: JobEvent, job: JobState) -> None:
        record = failure_of(event, job.failures)
        if self.config.events:
            for note in notes_for(event, record):
                verdict = self.correlator.observe(note, self.clock())
                if isinstance(verdict, Dropped):
                    self._drop(verdict.why)
                else:
                    self._offer(verdict)
        marking = self.config.node_condition or self.config.node_taint
        if record is not None and marking and not self._marked:
            slot = job.ranks.get(record.rank)
            gpu = slot.local_rank if slot is not None else record.rank
            fault = node_fault_of(record, self.pod.node, gpu)
            if fault is not None:
                self._marked = True
                self._offer(MarkNode(fault))

    def _offer(self, work: Work) -> None:
        try:
            self.queue.put_nowait(work)
        except queue.Full:
            self._drop("queue_full")

    def _first(self, key: tuple[str, str]) -> bool:
        """Whether `key` (what failed, how) is new: each is logged once."""
        with self._lock:
            new = key not in self._logged
            self._logged.add(key)
            return new

    def _drop(self, why: str) -> None:
        with self._lock:
            self._dropped[why] += 1
        if self._first(("drop", why)):
            log.warning(
                "Kubernetes Events: one dropped (%s); further drops are only counted "
                "(train_supervisor_kube_events_dropped_total)",
                why,
            )

    def counts(self) -> tuple[tuple[tuple[str, str], int], ...]:
        """((call, outcome), count), for /metrics; any thread."""
        with self._lock:
            return tuple(sorted(self._requests.items()))

    def drops(self) -> tuple[tuple[str, int], ...]:
        with self._lock:
            return tuple(sorted(self._dropped.items()))

    def close(self, wait_s: float) -> None:
        """Send what is queued for up to `wait_s` (the job's last events), then stop."""
        try:
            self.queue.put(None, timeout=wait_s)
        except queue.Full:
            return
        self._thread.join(timeout=wait_s)

    # ---------------------------------------------------------- the thread's side
    def _run(self) -> None:
        while True:
            work = self.queue.get()
            if work is None:
                return
            if isinstance(work, MarkNode):
                self._mark_node(work.fault)
            elif isinstance(work, CreateEvent):
                self._call(
                    "create_event",
                    self._create,
                    work.name,
                    work.note,
                    1,
                    work.first_time,
                    work.first_time,
                )
            else:
                self._send_repeat(work)

    def _call(self, call: str, fn: Callable[..., Any], *args: Any) -> str:
        """Run one request; count and (once per call and outcome) log how it went."""
        outcome, detail = OK, ""
        try:
            fn(*args)
        except Exception as err:  # whatever the client raises is counted, never fatal
            outcome, detail = _classify(err)
        with self._lock:
            self._requests[(call, outcome)] += 1
        if outcome != OK and self._first((call, outcome)):
            log.warning(
                "Kubernetes API: %s: %s (%s); further ones are only counted "
                "(train_supervisor_kube_requests_total)",
                call,
                outcome,
                detail,
            )
        return outcome

    def _event_body(self, name: str, note: Any, count: int, first: float, last: float) -> Any:
        client = _client_module()
        pod = self.pod
        return client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=name, namespace=pod.namespace),
            involved_object=client.V1ObjectReference(
                api_version="v1", kind="Pod", name=pod.name, namespace=pod.namespace, uid=pod.uid
            ),
            reason=note.reason,
            message=note.message,
            type=note.type,
            count=count,
            first_timestamp=_time(first),
            last_timestamp=_time(last),
            source=client.V1EventSource(component=COMPONENT, host=pod.node or None),
            reporting_component=COMPONENT,
            reporting_instance=pod.name,
        )

    def _create(self, name: str, note: Any, count: int, first: float, last: float) -> None:
        body = self._event_body(name, note, count, first, last)
        self.api.create_namespaced_event(self.pod.namespace, body, _request_timeout=self.timeout_s)

    def _patch(self, work: PatchEvent) -> None:
        body = {"count": work.count, "lastTimestamp": _time(work.last_time).isoformat()}
        self.api.patch_namespaced_event(
            work.name, self.pod.namespace, body, _request_timeout=self.timeout_s
        )

    def _send_repeat(self, work: PatchEvent) -> None:
        # client-go: a repeat whose Event is gone (expired, or its create failed) is created anew.
        if self._call("patch_event", self._patch, work) == "not_found":
            args = (work.name, work.note, work.count, work.first_time, work.last_time)
            self._call("create_event", self._create, *args)

    # ------------------------------------------------------------ the node
    def _mark_node(self, fault: NodeFault) -> None:
        if self.config.node_condition:
            self._call("patch_node_status", self._set_condition, fault)
        # Taints are a list without a merge key: read, add, write back at that
        # resourceVersion (409 if the node changed meanwhile: once more).
        if self.config.node_taint and self._call("taint_node", self._taint) == "conflict":
            self._call("taint_node", self._taint)

    def _set_condition(self, fault: NodeFault) -> None:
        now = _time(self.clock()).isoformat()
        condition = {
            "type": CONDITION_TYPE,
            "status": "True",
            "reason": fault.reason,
            "message": fault.message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        body = {"status": {"conditions": [condition]}}  # strategic merge: keyed by type
        self.api.patch_node_status(self.pod.node, body, _request_timeout=self.timeout_s)

    def _taint(self) -> None:
        node = self.api.read_node(self.pod.node, _request_timeout=self.timeout_s)
        taints = list(node.spec.taints or []) if node.spec is not None else []
        if any(t.key == TAINT_KEY and t.effect == TAINT_EFFECT for t in taints):
            return
        wanted = [{"key": t.key, "value": t.value, "effect": t.effect} for t in taints]
        wanted.append({"key": TAINT_KEY, "value": "true", "effect": TAINT_EFFECT})
        body = {
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": wanted},
        }
        self.api.patch_node(self.pod.node, body, _request_timeout=self.timeout_s)


def _client_module() -> Any:
    from supervisor.outputs.kube.api import kubernetes_client

    return kubernetes_client()


def _classify(err: Exception) -> tuple[str, str]:
    """(outcome, one line of detail) for what a client call raised."""
    status = getattr(err, "status", None)
    if isinstance(status, int) and status:
        return outcome_of_status(status), f"HTTP {status} {getattr(err, 'reason', '')}".strip()
    name = type(err).__name__
    text = str(err)
    if "timed out" in text.lower() or "Timeout" in name:
        return "timeout", f"{name}: no answer in time"
    if name in ("MaxRetryError", "NewConnectionError", "ProtocolError", "SSLError"):
        return "unreachable", f"{name}: {text[:200]}"
    return "error", f"{name}: {text[:200]}"


def reporter_for(config: KubeConfig) -> Optional[KubeReporter]:
    """The reporter when SUPERVISOR_KUBE_* switched something on, else None.

    ConfigError without the kube extra or a readable token file."""
    if not config.enabled:
        return None
    from supervisor.outputs.kube.api import core_v1

    assert config.api is not None
    return KubeReporter(config, core_v1(config.api))
