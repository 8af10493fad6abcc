"""supervisor/app.py: `train-supervisor serve` and `train-launch --standalone` wire the same
process from one SidecarConfig, and build the core's settings with one function."""

from __future__ import annotations

import asyncio
import dataclasses
import typing
import urllib.request

from supervisor.app import App, EmbeddedSupervisor, standalone_config, supervisor_settings
from supervisor.rpc.service import DELIVERY, SupervisorSettings
from supervisor.rules.effects import Effect
from supervisor.settings.detection import parse_detect
from supervisor.settings.serve import parse_config
from supervisor.settings.snapshots import parse_offload
from supervisor.workers.ports import free_port
from train_supervisor.credentials import client_channel
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

TOKEN = "app-test-token-0123456789abcdef"
# Snapshot and detection settings both commands read from the environment.
ENV = {
    "SUPERVISOR_PERSIST_EVERY_STEPS": "7",
    "SUPERVISOR_REPLICATE": "false",
    "SUPERVISOR_HANG_FACTOR": "9",
    "SUPERVISOR_HANG_STACKS": "false",
    "SUPERVISOR_CRASH_LOOP_WINDOW_S": "45",
}


def test_serve_and_standalone_build_the_core_settings_with_one_function() -> None:
    """The same job rules, given as `serve`'s variables and as train-launch's flags, give the
    same settings; the environment's snapshot and detection settings reach both."""
    served = parse_config(
        {
            **ENV,
            "SUPERVISOR_BIND": "127.0.0.1",
            "SUPERVISOR_UNWIND_TIMEOUT_S": "4",
            "SUPERVISOR_FAILURE_SETTLE_S": "0.5",
            "SUPERVISOR_CRASH_LOOP_THRESHOLD": "5",
        }
    )
    standalone = standalone_config(
        ENV,
        port=0,
        token=TOKEN,
        crash_loop_threshold=5,
        unwind_timeout_s=4.0,
        failure_settle_s=0.5,
        tick_s=0.1,
    )
    settings = supervisor_settings(served)
    assert settings == supervisor_settings(standalone)
    assert settings != SupervisorSettings()  # every value above is not the default
    assert settings.offload == parse_offload(ENV) and settings.offload.persist_every_steps == 7
    assert settings.detect == parse_detect(ENV) and settings.detect.hang.factor == 9
    assert (settings.unwind_timeout_s, settings.failure_settle_s) == (4.0, 0.5)
    assert settings.crash_loop_threshold == 5


def get_status(address: str) -> pb.JobStatus:
    with client_channel(address, TOKEN) as channel:
        status: pb.JobStatus = pb_grpc.StatusServiceStub(channel).GetStatus(
            pb.GetStatusRequest(), timeout=10
        )
        return status


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text: str = reply.read().decode()
        return text


def test_the_embedded_supervisor_runs_the_app_serve_runs() -> None:
    """--standalone's supervisor (on its own thread) and serve's (on the caller's loop) are one
    App: the core with the config's settings, gRPC with the token, and /metrics."""
    metrics_port = free_port()
    config = standalone_config(
        {**ENV, "SUPERVISOR_METRICS_PORT": str(metrics_port)},
        port=0,
        token=TOKEN,
        crash_loop_threshold=3,
        unwind_timeout_s=10.0,
        failure_settle_s=1.0,
        tick_s=0.05,
    )
    embedded = EmbeddedSupervisor(config)
    address = embedded.start()
    try:
        assert isinstance(embedded.app, App)
        assert embedded.app.sup.settings == supervisor_settings(config)
        assert get_status(address).state == pb.JobState.JOB_STATE_STARTING
        assert "train_supervisor" in metrics_text(metrics_port)
    finally:
        embedded.close()

    async def serve() -> tuple[SupervisorSettings, pb.JobStatus]:
        served = parse_config(
            {**ENV, "SUPERVISOR_BIND": "127.0.0.1", "SUPERVISOR_TOKEN": TOKEN},
            {"SUPERVISOR_PORT": "0"},
        )
        app = await App.start(served)
        try:
            status = await asyncio.to_thread(get_status, f"127.0.0.1:{app.port}")
        finally:
            await app.finish()
            await app.close(0.5)
        assert app.sup.settings == supervisor_settings(served)
        return app.sup.settings, status

    settings, status = asyncio.run(serve())
    assert status.state == pb.JobState.JOB_STATE_STARTING
    # Only the timer period differs: --monitor-interval, which serve has no variable for.
    assert settings == supervisor_settings(dataclasses.replace(config, tick_s=0.1))


def test_each_proto_service_has_one_servicer_in_a_module_of_its_own() -> None:
    servicers = {}
    for name in pb.DESCRIPTOR.services_by_name:
        base = getattr(pb_grpc, f"{name}Servicer")
        ours = [c for c in base.__subclasses__() if c.__module__.startswith("supervisor.")]
        assert len(ours) == 1, (name, ours)
        servicers[name] = ours[0].__module__
    assert len(set(servicers.values())) == len(servicers), servicers


def test_every_kind_of_effect_has_its_delivery() -> None:
    assert set(DELIVERY) == set(typing.get_args(Effect))
