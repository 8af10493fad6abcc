"""The checked-in generated code (train_supervisor/v1/) must match proto/.

A .proto edit without `python tools/gen_proto.py` (or a hand edit of the
generated files) fails here, before it fails on the wire.
"""

from __future__ import annotations

import ast
import difflib
import pathlib
import re

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]

from train_supervisor.v1 import supervisor_pb2, supervisor_pb2_grpc

REPO = pathlib.Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"
PROTO_FILE = "train_supervisor/v1/supervisor.proto"
GENERATED = REPO / "train_supervisor" / "v1"
REGENERATE = "proto and generated code differ: run `python tools/gen_proto.py`"


def _strip_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    # --descriptor_set_out fills json_name; the descriptor embedded by --python_out does not.
    for field in message.field:
        field.ClearField("json_name")
    for nested in message.nested_type:
        _strip_json_names(nested)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorProto:
    """The .proto as protoc reads it now."""
    out = tmp_path_factory.mktemp("proto") / "supervisor.desc"
    rc = protoc.main(
        ["protoc", f"-I{PROTO_ROOT}", f"--descriptor_set_out={out}", str(PROTO_ROOT / PROTO_FILE)]
    )
    assert rc == 0, f"protoc failed on {PROTO_FILE}"
    file_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    [proto] = file_set.file
    proto.ClearField("source_code_info")
    for message in proto.message_type:
        _strip_json_names(message)
    return proto


@pytest.fixture(scope="module")
def generated() -> descriptor_pb2.FileDescriptorProto:
    """The descriptor baked into supervisor_pb2.py."""
    return descriptor_pb2.FileDescriptorProto.FromString(supervisor_pb2.DESCRIPTOR.serialized_pb)


def _text_diff(
    want: descriptor_pb2.FileDescriptorProto, got: descriptor_pb2.FileDescriptorProto
) -> str:
    return "\n".join(
        difflib.unified_diff(
            str(want).splitlines(), str(got).splitlines(), "proto", "supervisor_pb2.py", lineterm=""
        )
    )


def test_pb2_descriptor_matches_the_proto(
    compiled: descriptor_pb2.FileDescriptorProto, generated: descriptor_pb2.FileDescriptorProto
) -> None:
    assert compiled.name == generated.name == PROTO_FILE
    assert compiled.package == "train_supervisor.v1"
    if compiled != generated:
        pytest.fail(f"{REGENERATE}\n{_text_diff(compiled, generated)}")


def _message_fields(
    messages: list[descriptor_pb2.DescriptorProto], prefix: str = ""
) -> dict[str, tuple[str, ...]]:
    fields: dict[str, tuple[str, ...]] = {}
    for message in messages:
        name = prefix + message.name
        fields[name] = tuple(f.name for f in message.field)
        fields.update(_message_fields(list(message.nested_type), name + "."))
    return fields


def _pyi_slots(body: list[ast.stmt], prefix: str = "") -> dict[str, tuple[str, ...]]:
    slots: dict[str, tuple[str, ...]] = {}
    for node in body:
        if not isinstance(node, ast.ClassDef):
            continue
        name = prefix + node.name
        for item in node.body:
            if isinstance(item, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in item.targets
            ):
                slots[name] = tuple(ast.literal_eval(item.value))
        slots.update(_pyi_slots(node.body, name + "."))
    return slots


def test_pyi_stub_matches_the_proto(compiled: descriptor_pb2.FileDescriptorProto) -> None:
    """mypy reads the .pyi: a stale stub hides real type errors."""
    stub = ast.parse((GENERATED / "supervisor_pb2.pyi").read_text())
    slots = _pyi_slots(stub.body)
    enums = {e.name for e in compiled.enum_type}
    messages = {name: f for name, f in slots.items() if name not in enums}
    assert messages == _message_fields(list(compiled.message_type)), REGENERATE
    assert enums <= slots.keys(), REGENERATE


_STUB_CALL = re.compile(
    r"channel\.(unary_unary|unary_stream|stream_unary|stream_stream)\(\s*'([^']+)'"
)


def test_grpc_module_matches_the_services(compiled: descriptor_pb2.FileDescriptorProto) -> None:
    expected = {}
    for service in compiled.service:
        for method in service.method:
            kind = (
                ("stream" if method.client_streaming else "unary")
                + "_"
                + ("stream" if method.server_streaming else "unary")
            )
            expected[f"/{compiled.package}.{service.name}/{method.name}"] = kind
        for suffix in ("Stub", "Servicer"):
            assert hasattr(supervisor_pb2_grpc, service.name + suffix), REGENERATE
        assert hasattr(supervisor_pb2_grpc, f"add_{service.name}Servicer_to_server"), REGENERATE
    source = pathlib.Path(supervisor_pb2_grpc.__file__).read_text()
    found = {path: kind for kind, path in _STUB_CALL.findall(source)}
    assert found == expected, REGENERATE


def test_generated_code_has_no_runtime_version_gate() -> None:
    """tools/gen_proto.py pins the generator so the code imports under protobuf 4.25..7.x.

    Newer generators emit a runtime check that refuses older protobuf/grpcio
    releases still common in training images.
    """
    pb2 = (GENERATED / "supervisor_pb2.py").read_text()
    grpc_module = (GENERATED / "supervisor_pb2_grpc.py").read_text()
    assert "runtime_version" not in pb2, "regenerate with the pinned tools/gen_proto.py"
    assert "GRPC_GENERATED_VERSION" not in grpc_module, (
        "regenerate with the pinned tools/gen_proto.py"
    )


def test_generated_code_imports_the_package_not_a_top_level_proto_module() -> None:
    # `proto` is proto-plus's import name: generated code must not import from it.
    grpc_module = (GENERATED / "supervisor_pb2_grpc.py").read_text()
    assert "from train_supervisor.v1 import supervisor_pb2" in grpc_module
