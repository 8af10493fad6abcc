from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATE_UNKNOWN: _ClassVar[WorkerState]
    WORKER_STATE_INIT: _ClassVar[WorkerState]
    WORKER_STATE_HEALTHY: _ClassVar[WorkerState]
    WORKER_STATE_UNWINDING: _ClassVar[WorkerState]
    WORKER_STATE_SUCCEEDED: _ClassVar[WorkerState]
    WORKER_STATE_FAILED: _ClassVar[WorkerState]
    WORKER_STATE_STOPPED: _ClassVar[WorkerState]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNKNOWN: _ClassVar[JobState]
    JOB_STATE_STARTING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_RESTARTING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_STOPPED: _ClassVar[JobState]

class ReentryMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REENTRY_AUTO: _ClassVar[ReentryMode]
    REENTRY_ALWAYS: _ClassVar[ReentryMode]
    REENTRY_NEVER: _ClassVar[ReentryMode]

class OutcomeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[OutcomeKind]
    OUTCOME_FINISHED: _ClassVar[OutcomeKind]
    OUTCOME_RAISED: _ClassVar[OutcomeKind]
    OUTCOME_UNWOUND: _ClassVar[OutcomeKind]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_WAIT: _ClassVar[Verdict]
    VERDICT_EXIT_FAILED: _ClassVar[Verdict]
WORKER_STATE_UNKNOWN: WorkerState
WORKER_STATE_INIT: WorkerState
WORKER_STATE_HEALTHY: WorkerState
WORKER_STATE_UNWINDING: WorkerState
WORKER_STATE_SUCCEEDED: WorkerState
WORKER_STATE_FAILED: WorkerState
WORKER_STATE_STOPPED: WorkerState
JOB_STATE_UNKNOWN: JobState
JOB_STATE_STARTING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_RESTARTING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_STOPPED: JobState
REENTRY_AUTO: ReentryMode
REENTRY_ALWAYS: ReentryMode
REENTRY_NEVER: ReentryMode
OUTCOME_UNSPECIFIED: OutcomeKind
OUTCOME_FINISHED: OutcomeKind
OUTCOME_RAISED: OutcomeKind
OUTCOME_UNWOUND: OutcomeKind
VERDICT_UNSPECIFIED: Verdict
VERDICT_WAIT: Verdict
VERDICT_EXIT_FAILED: Verdict

class WorkerSpec(_message.Message):
    __slots__ = ("run_id", "role", "nnodes", "node_rank", "nproc_per_node", "max_restarts", "master_addr", "bootstrapped", "warm_spares", "error_file_dir", "base_env", "snapshot_dir", "reentry")
    class BaseEnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NNODES_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    NPROC_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    MASTER_ADDR_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAPPED_FIELD_NUMBER: _ClassVar[int]
    WARM_SPARES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FILE_DIR_FIELD_NUMBER: _ClassVar[int]
    BASE_ENV_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_DIR_FIELD_NUMBER: _ClassVar[int]
    REENTRY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    role: str
    nnodes: int
    node_rank: int
    nproc_per_node: int
    max_restarts: int
    master_addr: str
    bootstrapped: bool
    warm_spares: int
    error_file_dir: str
    base_env: _containers.ScalarMap[str, str]
    snapshot_dir: str
    reentry: ReentryMode
    def __init__(self, run_id: _Optional[str] = ..., role: _Optional[str] = ..., nnodes: _Optional[int] = ..., node_rank: _Optional[int] = ..., nproc_per_node: _Optional[int] = ..., max_restarts: _Optional[int] = ..., master_addr: _Optional[str] = ..., bootstrapped: bool = ..., warm_spares: _Optional[int] = ..., error_file_dir: _Optional[str] = ..., base_env: _Optional[_Mapping[str, str]] = ..., snapshot_dir: _Optional[str] = ..., reentry: _Optional[_Union[ReentryMode, str]] = ...) -> None: ...

class FailureDetail(_message.Message):
    __slots__ = ("exception_type", "message", "traceback", "signature")
    EXCEPTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    exception_type: str
    message: str
    traceback: str
    signature: str
    def __init__(self, exception_type: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AttachLauncherRequest(_message.Message):
    __slots__ = ("spec", "launcher_pid", "pid_namespace", "reattach", "processes")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    LAUNCHER_PID_FIELD_NUMBER: _ClassVar[int]
    PID_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    REATTACH_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    spec: WorkerSpec
    launcher_pid: int
    pid_namespace: str
    reattach: bool
    processes: _containers.RepeatedCompositeFieldContainer[LauncherProcess]
    def __init__(self, spec: _Optional[_Union[WorkerSpec, _Mapping]] = ..., launcher_pid: _Optional[int] = ..., pid_namespace: _Optional[str] = ..., reattach: bool = ..., processes: _Optional[_Iterable[_Union[LauncherProcess, _Mapping]]] = ...) -> None: ...

class LauncherProcess(_message.Message):
    __slots__ = ("pid", "rank", "local_rank")
    PID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    pid: int
    rank: int
    local_rank: int
    def __init__(self, pid: _Optional[int] = ..., rank: _Optional[int] = ..., local_rank: _Optional[int] = ...) -> None: ...

class SpawnWorker(_message.Message):
    __slots__ = ("rank", "local_rank", "spare", "env")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    SPARE_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    rank: int
    local_rank: int
    spare: bool
    env: _containers.ScalarMap[str, str]
    def __init__(self, rank: _Optional[int] = ..., local_rank: _Optional[int] = ..., spare: bool = ..., env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class KillProcess(_message.Message):
    __slots__ = ("pid", "signal", "reason")
    PID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    pid: int
    signal: int
    reason: str
    def __init__(self, pid: _Optional[int] = ..., signal: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RankAssigned(_message.Message):
    __slots__ = ("pid", "rank", "local_rank")
    PID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    pid: int
    rank: int
    local_rank: int
    def __init__(self, pid: _Optional[int] = ..., rank: _Optional[int] = ..., local_rank: _Optional[int] = ...) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ("exit_code", "report")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    report: str
    def __init__(self, exit_code: _Optional[int] = ..., report: _Optional[str] = ...) -> None: ...

class LauncherCommand(_message.Message):
    __slots__ = ("spawn", "kill", "assigned", "shutdown")
    SPAWN_FIELD_NUMBER: _ClassVar[int]
    KILL_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    spawn: SpawnWorker
    kill: KillProcess
    assigned: RankAssigned
    shutdown: Shutdown
    def __init__(self, spawn: _Optional[_Union[SpawnWorker, _Mapping]] = ..., kill: _Optional[_Union[KillProcess, _Mapping]] = ..., assigned: _Optional[_Union[RankAssigned, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ...) -> None: ...

class ProcessStarted(_message.Message):
    __slots__ = ("pid", "rank", "spare")
    PID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SPARE_FIELD_NUMBER: _ClassVar[int]
    pid: int
    rank: int
    spare: bool
    def __init__(self, pid: _Optional[int] = ..., rank: _Optional[int] = ..., spare: bool = ...) -> None: ...

class ProcessExit(_message.Message):
    __slots__ = ("pid", "exit_code", "signal", "output_tail", "oom_kills")
    PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TAIL_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLS_FIELD_NUMBER: _ClassVar[int]
    pid: int
    exit_code: int
    signal: int
    output_tail: str
    oom_kills: int
    def __init__(self, pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., output_tail: _Optional[str] = ..., oom_kills: _Optional[int] = ...) -> None: ...

class AttachWorkerRequest(_message.Message):
    __slots__ = ("pid", "rank", "spare", "reattach", "generation", "state", "step", "master_addr", "master_port", "restart_count")
    PID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SPARE_FIELD_NUMBER: _ClassVar[int]
    REATTACH_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MASTER_ADDR_FIELD_NUMBER: _ClassVar[int]
    MASTER_PORT_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    pid: int
    rank: int
    spare: bool
    reattach: bool
    generation: int
    state: WorkerState
    step: int
    master_addr: str
    master_port: int
    restart_count: int
    def __init__(self, pid: _Optional[int] = ..., rank: _Optional[int] = ..., spare: bool = ..., reattach: bool = ..., generation: _Optional[int] = ..., state: _Optional[_Union[WorkerState, str]] = ..., step: _Optional[int] = ..., master_addr: _Optional[str] = ..., master_port: _Optional[int] = ..., restart_count: _Optional[int] = ...) -> None: ...

class StartGeneration(_message.Message):
    __slots__ = ("generation", "rank", "local_rank", "env")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    generation: int
    rank: int
    local_rank: int
    env: _containers.ScalarMap[str, str]
    def __init__(self, generation: _Optional[int] = ..., rank: _Optional[int] = ..., local_rank: _Optional[int] = ..., env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AbortGeneration(_message.Message):
    __slots__ = ("generation", "reason")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    generation: int
    reason: str
    def __init__(self, generation: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ExitWorker(_message.Message):
    __slots__ = ("exit_code",)
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    def __init__(self, exit_code: _Optional[int] = ...) -> None: ...

class WorkerCommand(_message.Message):
    __slots__ = ("start", "abort", "exit")
    START_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    start: StartGeneration
    abort: AbortGeneration
    exit: ExitWorker
    def __init__(self, start: _Optional[_Union[StartGeneration, _Mapping]] = ..., abort: _Optional[_Union[AbortGeneration, _Mapping]] = ..., exit: _Optional[_Union[ExitWorker, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("pid", "rank", "generation", "step", "step_time_s", "compute_s")
    PID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_S_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    pid: int
    rank: int
    generation: int
    step: int
    step_time_s: float
    compute_s: float
    def __init__(self, pid: _Optional[int] = ..., rank: _Optional[int] = ..., generation: _Optional[int] = ..., step: _Optional[int] = ..., step_time_s: _Optional[float] = ..., compute_s: _Optional[float] = ...) -> None: ...

class WorkerOutcome(_message.Message):
    __slots__ = ("pid", "rank", "generation", "kind", "failure", "step")
    PID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    pid: int
    rank: int
    generation: int
    kind: OutcomeKind
    failure: FailureDetail
    step: int
    def __init__(self, pid: _Optional[int] = ..., rank: _Optional[int] = ..., generation: _Optional[int] = ..., kind: _Optional[_Union[OutcomeKind, str]] = ..., failure: _Optional[_Union[FailureDetail, _Mapping]] = ..., step: _Optional[int] = ...) -> None: ...

class OutcomeVerdict(_message.Message):
    __slots__ = ("verdict",)
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    def __init__(self, verdict: _Optional[_Union[Verdict, str]] = ...) -> None: ...

class SnapshotSaved(_message.Message):
    __slots__ = ("pid", "rank", "generation", "step", "held", "bytes", "blocking_s")
    PID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCKING_S_FIELD_NUMBER: _ClassVar[int]
    pid: int
    rank: int
    generation: int
    step: int
    held: _containers.RepeatedScalarFieldContainer[int]
    bytes: int
    blocking_s: float
    def __init__(self, pid: _Optional[int] = ..., rank: _Optional[int] = ..., generation: _Optional[int] = ..., step: _Optional[int] = ..., held: _Optional[_Iterable[int]] = ..., bytes: _Optional[int] = ..., blocking_s: _Optional[float] = ...) -> None: ...

class CommitReply(_message.Message):
    __slots__ = ("committed_step",)
    COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    committed_step: int
    def __init__(self, committed_step: _Optional[int] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("pid", "rank", "generation")
    PID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    pid: int
    rank: int
    generation: int
    def __init__(self, pid: _Optional[int] = ..., rank: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class RestorePoint(_message.Message):
    __slots__ = ("step", "source")
    STEP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    step: int
    source: str
    def __init__(self, step: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class RestoreReport(_message.Message):
    __slots__ = ("pid", "rank", "generation", "step", "source", "problem", "seconds")
    PID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    pid: int
    rank: int
    generation: int
    step: int
    source: str
    problem: str
    seconds: float
    def __init__(self, pid: _Optional[int] = ..., rank: _Optional[int] = ..., generation: _Optional[int] = ..., step: _Optional[int] = ..., source: _Optional[str] = ..., problem: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class RankStatus(_message.Message):
    __slots__ = ("rank", "local_rank", "node_rank", "pid", "state", "step", "step_time_s", "heartbeat_age_s", "process_starts", "saved_step", "committed_step", "snapshot_bytes", "save_blocking_s", "restored_step", "restored_from", "replicated_step", "persisted_step", "compute_s")
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AGE_S_FIELD_NUMBER: _ClassVar[int]
    PROCESS_STARTS_FIELD_NUMBER: _ClassVar[int]
    SAVED_STEP_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SAVE_BLOCKING_S_FIELD_NUMBER: _ClassVar[int]
    RESTORED_STEP_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FROM_FIELD_NUMBER: _ClassVar[int]
    REPLICATED_STEP_FIELD_NUMBER: _ClassVar[int]
    PERSISTED_STEP_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    rank: int
    local_rank: int
    node_rank: int
    pid: int
    state: WorkerState
    step: int
    step_time_s: float
    heartbeat_age_s: float
    process_starts: int
    saved_step: int
    committed_step: int
    snapshot_bytes: int
    save_blocking_s: float
    restored_step: int
    restored_from: str
    replicated_step: int
    persisted_step: int
    compute_s: float
    def __init__(self, rank: _Optional[int] = ..., local_rank: _Optional[int] = ..., node_rank: _Optional[int] = ..., pid: _Optional[int] = ..., state: _Optional[_Union[WorkerState, str]] = ..., step: _Optional[int] = ..., step_time_s: _Optional[float] = ..., heartbeat_age_s: _Optional[float] = ..., process_starts: _Optional[int] = ..., saved_step: _Optional[int] = ..., committed_step: _Optional[int] = ..., snapshot_bytes: _Optional[int] = ..., save_blocking_s: _Optional[float] = ..., restored_step: _Optional[int] = ..., restored_from: _Optional[str] = ..., replicated_step: _Optional[int] = ..., persisted_step: _Optional[int] = ..., compute_s: _Optional[float] = ...) -> None: ...

class FailureRecord(_message.Message):
    __slots__ = ("generation", "rank", "pid", "exit_code", "signal", "detail", "step", "action", "time_unix", "failure_class", "reason", "job_step")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CLASS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    JOB_STEP_FIELD_NUMBER: _ClassVar[int]
    generation: int
    rank: int
    pid: int
    exit_code: int
    signal: int
    detail: FailureDetail
    step: int
    action: str
    time_unix: float
    failure_class: str
    reason: str
    job_step: int
    def __init__(self, generation: _Optional[int] = ..., rank: _Optional[int] = ..., pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., detail: _Optional[_Union[FailureDetail, _Mapping]] = ..., step: _Optional[int] = ..., action: _Optional[str] = ..., time_unix: _Optional[float] = ..., failure_class: _Optional[str] = ..., reason: _Optional[str] = ..., job_step: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("time_unix", "kind", "message", "seq", "node_rank")
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    time_unix: float
    kind: str
    message: str
    seq: int
    node_rank: int
    def __init__(self, time_unix: _Optional[float] = ..., kind: _Optional[str] = ..., message: _Optional[str] = ..., seq: _Optional[int] = ..., node_rank: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("after", "follow")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    after: int
    follow: bool
    def __init__(self, after: _Optional[int] = ..., follow: bool = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("kind", "node_rank", "since_unix", "windows", "score", "summary", "values", "medians", "slowdown")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MediansEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MEDIANS_FIELD_NUMBER: _ClassVar[int]
    SLOWDOWN_FIELD_NUMBER: _ClassVar[int]
    kind: str
    node_rank: int
    since_unix: float
    windows: int
    score: float
    summary: str
    values: _containers.ScalarMap[str, float]
    medians: _containers.ScalarMap[str, float]
    slowdown: float
    def __init__(self, kind: _Optional[str] = ..., node_rank: _Optional[int] = ..., since_unix: _Optional[float] = ..., windows: _Optional[int] = ..., score: _Optional[float] = ..., summary: _Optional[str] = ..., values: _Optional[_Mapping[str, float]] = ..., medians: _Optional[_Mapping[str, float]] = ..., slowdown: _Optional[float] = ...) -> None: ...

class PodSample(_message.Message):
    __slots__ = ("node_rank", "time_unix", "window_s", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    node_rank: int
    time_unix: float
    window_s: float
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, node_rank: _Optional[int] = ..., time_unix: _Optional[float] = ..., window_s: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("run_id", "generation", "world_size", "state", "restart_count", "max_restarts", "ranks", "last_failure", "spare_pids", "leader", "recent_events", "committed_step", "replicated_step", "persisted_step", "offload_errors", "findings", "samples", "reentry", "fresh_processes", "persist_failures")
    class PersistFailuresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    SPARE_PIDS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    RECENT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    REPLICATED_STEP_FIELD_NUMBER: _ClassVar[int]
    PERSISTED_STEP_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    REENTRY_FIELD_NUMBER: _ClassVar[int]
    FRESH_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    PERSIST_FAILURES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    generation: int
    world_size: int
    state: JobState
    restart_count: int
    max_restarts: int
    ranks: _containers.RepeatedCompositeFieldContainer[RankStatus]
    last_failure: FailureRecord
    spare_pids: _containers.RepeatedScalarFieldContainer[int]
    leader: str
    recent_events: _containers.RepeatedCompositeFieldContainer[JobEvent]
    committed_step: int
    replicated_step: int
    persisted_step: int
    offload_errors: _containers.RepeatedScalarFieldContainer[str]
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    samples: _containers.RepeatedCompositeFieldContainer[PodSample]
    reentry: ReentryMode
    fresh_processes: str
    persist_failures: _containers.ScalarMap[str, int]
    def __init__(self, run_id: _Optional[str] = ..., generation: _Optional[int] = ..., world_size: _Optional[int] = ..., state: _Optional[_Union[JobState, str]] = ..., restart_count: _Optional[int] = ..., max_restarts: _Optional[int] = ..., ranks: _Optional[_Iterable[_Union[RankStatus, _Mapping]]] = ..., last_failure: _Optional[_Union[FailureRecord, _Mapping]] = ..., spare_pids: _Optional[_Iterable[int]] = ..., leader: _Optional[str] = ..., recent_events: _Optional[_Iterable[_Union[JobEvent, _Mapping]]] = ..., committed_step: _Optional[int] = ..., replicated_step: _Optional[int] = ..., persisted_step: _Optional[int] = ..., offload_errors: _Optional[_Iterable[str]] = ..., findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ..., samples: _Optional[_Iterable[_Union[PodSample, _Mapping]]] = ..., reentry: _Optional[_Union[ReentryMode, str]] = ..., fresh_processes: _Optional[str] = ..., persist_failures: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ReplicaHeader(_message.Message):
    __slots__ = ("run_id", "node_rank", "rank", "step", "generation", "manifest", "payload_len", "checksum")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_LEN_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    node_rank: int
    rank: int
    step: int
    generation: int
    manifest: bytes
    payload_len: int
    checksum: int
    def __init__(self, run_id: _Optional[str] = ..., node_rank: _Optional[int] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ..., generation: _Optional[int] = ..., manifest: _Optional[bytes] = ..., payload_len: _Optional[int] = ..., checksum: _Optional[int] = ...) -> None: ...

class ReplicaChunk(_message.Message):
    __slots__ = ("header", "offset", "data", "crc32c")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    header: ReplicaHeader
    offset: int
    data: bytes
    crc32c: int
    def __init__(self, header: _Optional[_Union[ReplicaHeader, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., crc32c: _Optional[int] = ...) -> None: ...

class ReplicaAck(_message.Message):
    __slots__ = ("rank", "step", "bytes")
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    rank: int
    step: int
    bytes: int
    def __init__(self, rank: _Optional[int] = ..., step: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class ReplicaRequest(_message.Message):
    __slots__ = ("run_id", "rank", "step")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    rank: int
    step: int
    def __init__(self, run_id: _Optional[str] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class ReplicaInventory(_message.Message):
    __slots__ = ("ranks",)
    class Held(_message.Message):
        __slots__ = ("rank", "steps")
        RANK_FIELD_NUMBER: _ClassVar[int]
        STEPS_FIELD_NUMBER: _ClassVar[int]
        rank: int
        steps: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, rank: _Optional[int] = ..., steps: _Optional[_Iterable[int]] = ...) -> None: ...
    RANKS_FIELD_NUMBER: _ClassVar[int]
    ranks: _containers.RepeatedCompositeFieldContainer[ReplicaInventory.Held]
    def __init__(self, ranks: _Optional[_Iterable[_Union[ReplicaInventory.Held, _Mapping]]] = ...) -> None: ...

class InventoryRequest(_message.Message):
    __slots__ = ("run_id", "verify")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    verify: bool
    def __init__(self, run_id: _Optional[str] = ..., verify: bool = ...) -> None: ...

class PolicyFailure(_message.Message):
    __slots__ = ("generation", "rank", "signature", "step", "failure_class", "action", "reason", "time_unix", "reentry_failed")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CLASS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    REENTRY_FAILED_FIELD_NUMBER: _ClassVar[int]
    generation: int
    rank: int
    signature: str
    step: int
    failure_class: str
    action: str
    reason: str
    time_unix: float
    reentry_failed: bool
    def __init__(self, generation: _Optional[int] = ..., rank: _Optional[int] = ..., signature: _Optional[str] = ..., step: _Optional[int] = ..., failure_class: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ..., time_unix: _Optional[float] = ..., reentry_failed: bool = ...) -> None: ...

class PodView(_message.Message):
    __slots__ = ("generation", "restart_count", "history", "finished", "fresh_processes")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FRESH_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    generation: int
    restart_count: int
    history: _containers.RepeatedCompositeFieldContainer[PolicyFailure]
    finished: bool
    fresh_processes: str
    def __init__(self, generation: _Optional[int] = ..., restart_count: _Optional[int] = ..., history: _Optional[_Iterable[_Union[PolicyFailure, _Mapping]]] = ..., finished: bool = ..., fresh_processes: _Optional[str] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("run_id", "node_rank", "nproc", "view", "has_view", "incarnation", "running", "ranks")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    NPROC_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    HAS_VIEW_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    node_rank: int
    nproc: int
    view: PodView
    has_view: bool
    incarnation: int
    running: bool
    ranks: _containers.RepeatedCompositeFieldContainer[RankStatus]
    def __init__(self, run_id: _Optional[str] = ..., node_rank: _Optional[int] = ..., nproc: _Optional[int] = ..., view: _Optional[_Union[PodView, _Mapping]] = ..., has_view: bool = ..., incarnation: _Optional[int] = ..., running: bool = ..., ranks: _Optional[_Iterable[_Union[RankStatus, _Mapping]]] = ...) -> None: ...

class OpenGenerationMsg(_message.Message):
    __slots__ = ("generation", "restart_count", "reason", "history", "fresh_processes")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    FRESH_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    generation: int
    restart_count: int
    reason: str
    history: _containers.RepeatedCompositeFieldContainer[PolicyFailure]
    fresh_processes: str
    def __init__(self, generation: _Optional[int] = ..., restart_count: _Optional[int] = ..., reason: _Optional[str] = ..., history: _Optional[_Iterable[_Union[PolicyFailure, _Mapping]]] = ..., fresh_processes: _Optional[str] = ...) -> None: ...

class StartGenerationMsg(_message.Message):
    __slots__ = ("generation", "restart_count", "master_addr", "master_port", "world_size", "nnodes", "history", "restore_step", "restore_reason")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    MASTER_ADDR_FIELD_NUMBER: _ClassVar[int]
    MASTER_PORT_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    NNODES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    RESTORE_STEP_FIELD_NUMBER: _ClassVar[int]
    RESTORE_REASON_FIELD_NUMBER: _ClassVar[int]
    generation: int
    restart_count: int
    master_addr: str
    master_port: int
    world_size: int
    nnodes: int
    history: _containers.RepeatedCompositeFieldContainer[PolicyFailure]
    restore_step: int
    restore_reason: str
    def __init__(self, generation: _Optional[int] = ..., restart_count: _Optional[int] = ..., master_addr: _Optional[str] = ..., master_port: _Optional[int] = ..., world_size: _Optional[int] = ..., nnodes: _Optional[int] = ..., history: _Optional[_Iterable[_Union[PolicyFailure, _Mapping]]] = ..., restore_step: _Optional[int] = ..., restore_reason: _Optional[str] = ...) -> None: ...

class OffloadRoundMsg(_message.Message):
    __slots__ = ("step", "replicate", "persist")
    STEP_FIELD_NUMBER: _ClassVar[int]
    REPLICATE_FIELD_NUMBER: _ClassVar[int]
    PERSIST_FIELD_NUMBER: _ClassVar[int]
    step: int
    replicate: bool
    persist: bool
    def __init__(self, step: _Optional[int] = ..., replicate: bool = ..., persist: bool = ...) -> None: ...

class CommitMsg(_message.Message):
    __slots__ = ("generation", "step", "offload", "replicated_step", "persisted_step", "drop_persisted", "pod_away", "newest_saved")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_FIELD_NUMBER: _ClassVar[int]
    REPLICATED_STEP_FIELD_NUMBER: _ClassVar[int]
    PERSISTED_STEP_FIELD_NUMBER: _ClassVar[int]
    DROP_PERSISTED_FIELD_NUMBER: _ClassVar[int]
    POD_AWAY_FIELD_NUMBER: _ClassVar[int]
    NEWEST_SAVED_FIELD_NUMBER: _ClassVar[int]
    generation: int
    step: int
    offload: OffloadRoundMsg
    replicated_step: int
    persisted_step: int
    drop_persisted: _containers.RepeatedScalarFieldContainer[int]
    pod_away: bool
    newest_saved: int
    def __init__(self, generation: _Optional[int] = ..., step: _Optional[int] = ..., offload: _Optional[_Union[OffloadRoundMsg, _Mapping]] = ..., replicated_step: _Optional[int] = ..., persisted_step: _Optional[int] = ..., drop_persisted: _Optional[_Iterable[int]] = ..., pod_away: bool = ..., newest_saved: _Optional[int] = ...) -> None: ...

class EndJobMsg(_message.Message):
    __slots__ = ("exit_code", "report")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    report: str
    def __init__(self, exit_code: _Optional[int] = ..., report: _Optional[str] = ...) -> None: ...

class LeaderMessage(_message.Message):
    __slots__ = ("open", "start", "end", "commit", "replace")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    open: OpenGenerationMsg
    start: StartGenerationMsg
    end: EndJobMsg
    commit: CommitMsg
    replace: ReplacePodMsg
    def __init__(self, open: _Optional[_Union[OpenGenerationMsg, _Mapping]] = ..., start: _Optional[_Union[StartGenerationMsg, _Mapping]] = ..., end: _Optional[_Union[EndJobMsg, _Mapping]] = ..., commit: _Optional[_Union[CommitMsg, _Mapping]] = ..., replace: _Optional[_Union[ReplacePodMsg, _Mapping]] = ...) -> None: ...

class ReplacePodMsg(_message.Message):
    __slots__ = ("node_rank", "reason")
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_rank: int
    reason: str
    def __init__(self, node_rank: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class PodSnapshots(_message.Message):
    __slots__ = ("generation", "held")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    generation: int
    held: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, generation: _Optional[int] = ..., held: _Optional[_Iterable[int]] = ...) -> None: ...

class PodCopies(_message.Message):
    __slots__ = ("shm", "replicas", "persisted", "stored", "committed")
    class Replica(_message.Message):
        __slots__ = ("node_rank", "steps")
        NODE_RANK_FIELD_NUMBER: _ClassVar[int]
        STEPS_FIELD_NUMBER: _ClassVar[int]
        node_rank: int
        steps: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, node_rank: _Optional[int] = ..., steps: _Optional[_Iterable[int]] = ...) -> None: ...
    class Stored(_message.Message):
        __slots__ = ("name", "steps")
        NAME_FIELD_NUMBER: _ClassVar[int]
        STEPS_FIELD_NUMBER: _ClassVar[int]
        name: str
        steps: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, name: _Optional[str] = ..., steps: _Optional[_Iterable[int]] = ...) -> None: ...
    SHM_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    PERSISTED_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    shm: _containers.RepeatedScalarFieldContainer[int]
    replicas: _containers.RepeatedCompositeFieldContainer[PodCopies.Replica]
    persisted: _containers.RepeatedScalarFieldContainer[int]
    stored: _containers.RepeatedCompositeFieldContainer[PodCopies.Stored]
    committed: int
    def __init__(self, shm: _Optional[_Iterable[int]] = ..., replicas: _Optional[_Iterable[_Union[PodCopies.Replica, _Mapping]]] = ..., persisted: _Optional[_Iterable[int]] = ..., stored: _Optional[_Iterable[_Union[PodCopies.Stored, _Mapping]]] = ..., committed: _Optional[int] = ...) -> None: ...

class OffloadDone(_message.Message):
    __slots__ = ("step", "replica_error", "persist_error")
    STEP_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ERROR_FIELD_NUMBER: _ClassVar[int]
    PERSIST_ERROR_FIELD_NUMBER: _ClassVar[int]
    step: int
    replica_error: str
    persist_error: str
    def __init__(self, step: _Optional[int] = ..., replica_error: _Optional[str] = ..., persist_error: _Optional[str] = ...) -> None: ...

class RestoreFailed(_message.Message):
    __slots__ = ("generation", "step", "problem")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    generation: int
    step: int
    problem: str
    def __init__(self, generation: _Optional[int] = ..., step: _Optional[int] = ..., problem: _Optional[str] = ...) -> None: ...

class PodReport(_message.Message):
    __slots__ = ("node_rank", "incarnation", "ready", "finished", "failure", "heartbeat", "snapshots", "offloaded", "restore_failed", "reentry_failed", "collective_broke", "copies", "ranks", "last_failure", "sample")
    NODE_RANK_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    OFFLOADED_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FAILED_FIELD_NUMBER: _ClassVar[int]
    REENTRY_FAILED_FIELD_NUMBER: _ClassVar[int]
    COLLECTIVE_BROKE_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    node_rank: int
    incarnation: int
    ready: int
    finished: int
    failure: PolicyFailure
    heartbeat: bool
    snapshots: PodSnapshots
    offloaded: OffloadDone
    restore_failed: RestoreFailed
    reentry_failed: str
    collective_broke: int
    copies: PodCopies
    ranks: _containers.RepeatedCompositeFieldContainer[RankStatus]
    last_failure: FailureRecord
    sample: PodSample
    def __init__(self, node_rank: _Optional[int] = ..., incarnation: _Optional[int] = ..., ready: _Optional[int] = ..., finished: _Optional[int] = ..., failure: _Optional[_Union[PolicyFailure, _Mapping]] = ..., heartbeat: bool = ..., snapshots: _Optional[_Union[PodSnapshots, _Mapping]] = ..., offloaded: _Optional[_Union[OffloadDone, _Mapping]] = ..., restore_failed: _Optional[_Union[RestoreFailed, _Mapping]] = ..., reentry_failed: _Optional[str] = ..., collective_broke: _Optional[int] = ..., copies: _Optional[_Union[PodCopies, _Mapping]] = ..., ranks: _Optional[_Iterable[_Union[RankStatus, _Mapping]]] = ..., last_failure: _Optional[_Union[FailureRecord, _Mapping]] = ..., sample: _Optional[_Union[PodSample, _Mapping]] = ...) -> None: ...

class PodReportReply(_message.Message):
    __slots__ = ("rejoin",)
    REJOIN_FIELD_NUMBER: _ClassVar[int]
    rejoin: bool
    def __init__(self, rejoin: bool = ...) -> None: ...
