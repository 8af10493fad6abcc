"""docs/api.md: every RPC it names exists, every RPC of the proto is listed, and every grpcurl
command on the page works against a real supervisor, resolved through server reflection as
grpcurl resolves it.

The supervisor here serves plaintext on loopback with a token: a command's address is replaced
by the test server's, and its TLS options (-cacert, -authority) are checked for form only.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from supervisor.app import EmbeddedSupervisor
from supervisor.settings.serve import SidecarConfig
from train_supervisor.credentials import client_channel
from train_supervisor.v1 import supervisor_pb2 as pb
from train_supervisor.v1 import supervisor_pb2_grpc as pb_grpc

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
TOKEN = "api-doc-test-token-0123456789"
RPC_NAME = re.compile(
    r"\b((?:grpc\.[a-z]+|train_supervisor)\.v1(?:alpha)?)\.([A-Za-z]+)/([A-Za-z]+)"
)
FILES: dict[str, FileDescriptor] = {
    "train_supervisor.v1": pb.DESCRIPTOR,
    "grpc.health.v1": health_pb2.DESCRIPTOR,
    "grpc.reflection.v1alpha": reflection_pb2.DESCRIPTOR,
}


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_every_rpc_the_page_names_exists() -> None:
    named = RPC_NAME.findall(doc_text())
    assert len(named) > 20
    for package, service, method in named:
        assert package in FILES, f"{package}.{service}/{method}: unknown package"
        services = FILES[package].services_by_name
        assert service in services, f"{package}.{service}: no such service"
        assert method in services[service].methods_by_name, f"{service}/{method}: no such RPC"


def test_every_rpc_of_the_proto_is_listed() -> None:
    listed = {f"{p}.{s}/{m}" for p, s, m in RPC_NAME.findall(doc_text())}
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            assert f"{service.full_name}/{method.name}" in listed


def test_the_status_fields_are_job_status_fields() -> None:
    rows = doc_text().split("| field | meaning |")[1].split("\n\n")[0].splitlines()[2:]
    names = [n for row in rows for n in re.findall(r"`(\w+)`", row.split("|")[1])]
    assert len(names) > 10
    assert set(names) <= set(pb.JobStatus.DESCRIPTOR.fields_by_name)


@dataclass
class Grpcurl:
    """One documented grpcurl command line, parsed."""

    line: str
    plaintext: bool = False
    headers: list[tuple[str, str]] = field(default_factory=list)
    data: str = ""
    tls: dict[str, str] = field(default_factory=dict)
    verb: list[str] = field(default_factory=list)  # after the address


def grpcurl_commands() -> list[Grpcurl]:
    commands = []
    for line in doc_text().splitlines():
        if not line.startswith("grpcurl "):
            continue
        command, words = Grpcurl(line), shlex.split(line)[1:]
        while words[0].startswith("-"):
            option = words.pop(0)
            if option == "-plaintext":
                command.plaintext = True
            elif option == "-H":
                key, _, value = words.pop(0).partition(":")
                command.headers.append((key.strip().lower(), value.strip()))
            elif option == "-d":
                command.data = words.pop(0)
            elif option in ("-cacert", "-authority"):
                command.tls[option] = words.pop(0)
            else:
                raise AssertionError(f"{line}: option {option} is not checked here")
        command.verb = words[1:]  # words[0] is the address
        commands.append(command)
    return commands


COMMANDS = grpcurl_commands()


@pytest.fixture(scope="module")
def supervisor() -> Iterator[tuple[EmbeddedSupervisor, str]]:
    embedded = EmbeddedSupervisor(SidecarConfig(bind="127.0.0.1", port=0, token=TOKEN))
    address = embedded.start()
    # A launcher attached, so that status and events have a job to show.
    channel = client_channel(address, TOKEN)
    spec = pb.WorkerSpec(run_id="doc-run", nnodes=1, nproc_per_node=1, bootstrapped=True)
    commands = pb_grpc.LauncherServiceStub(channel).AttachLauncher(
        pb.AttachLauncherRequest(spec=spec, launcher_pid=1)
    )
    next(commands)  # the first command: the job exists now
    yield embedded, address
    commands.cancel()
    channel.close()
    embedded.close()


def call(channel: grpc.Channel, command: Grpcurl) -> Any:
    """What grpcurl does: resolve the method through reflection, send the JSON; the reply, or
    the stream's iterator."""
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service_name, _, method_name = command.verb[0].partition("/")
    method = pool.FindServiceByName(service_name).methods_by_name[method_name]
    request_class = message_factory.GetMessageClass(method.input_type)
    reply_class = message_factory.GetMessageClass(method.output_type)
    request = json_format.Parse(command.data or "{}", request_class())
    kind = channel.unary_stream if method.server_streaming else channel.unary_unary
    rpc = kind(
        f"/{service_name}/{method_name}",
        request_serializer=None,
        response_deserializer=reply_class.FromString,
    )
    headers = [(key, value.replace("$TOKEN", TOKEN)) for key, value in command.headers]
    return rpc(request.SerializeToString(), metadata=headers, timeout=10)


def test_the_page_has_the_promised_examples() -> None:
    verbs = [c.verb[0] for c in COMMANDS]
    assert {"list", "describe"} <= set(verbs)
    assert {
        "train_supervisor.v1.StatusService/GetStatus",
        "train_supervisor.v1.StatusService/WatchEvents",
        "grpc.health.v1.Health/Check",
    } <= set(verbs)
    assert any(c.headers for c in COMMANDS) and any(c.tls for c in COMMANDS)
    assert any('"follow": true' in c.data for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.line for c in COMMANDS])
def test_each_grpcurl_command_works(
    command: Grpcurl, supervisor: tuple[EmbeddedSupervisor, str]
) -> None:
    embedded, address = supervisor
    assert command.plaintext != bool(command.tls), "either -plaintext or TLS options"
    if command.tls:
        assert "-cacert" in command.tls
    verb = command.verb
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        if verb[0] == "list":
            services = set(database.get_services())
            if len(verb) == 1:
                assert {"train_supervisor.v1.StatusService", "grpc.health.v1.Health"} <= services
            else:
                assert verb[1] in services
                pool = descriptor_pool.DescriptorPool(database)
                assert pool.FindServiceByName(verb[1]).methods
            return
        if verb[0] == "describe":
            assert database.FindFileContainingSymbol(verb[1]).name.endswith(".proto")
            return
        reply = call(channel, command)
        if verb[0].endswith("/GetStatus"):
            assert reply.run_id == "doc-run"
        elif verb[0].endswith("/WatchEvents"):
            assert next(reply).kind == "launcher_attached"
            if '"follow": true' in command.data:
                # The stream stays open while the job runs: end the job, the stream ends.
                embedded.stop_job("test_api_doc: the job ends")
                assert "stopped" in [event.kind for event in reply]
        else:
            assert json_format.MessageToDict(reply)["status"] == "SERVING"


def test_a_token_is_what_lets_a_remote_caller_in() -> None:
    remote = [c for c in COMMANDS if c.headers]
    assert remote and all(c.headers == [("authorization", "Bearer $TOKEN")] for c in remote), (
        "the documented header is the one supervisor/rpc/auth.py checks"
    )
