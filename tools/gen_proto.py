"""Regenerate train_supervisor/v1/*_pb2*.py from proto/.

The generator is pinned (grpcio-tools 1.62.3, protoc 25) on purpose: code it
emits has no runtime version gate, so it imports under every protobuf from
4.25 to 7.x and grpcio from 1.60 on -- the range found in training images.
Run:  python tools/gen_proto.py
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

GRPC_TOOLS_PIN = "grpcio-tools==1.62.3"
PINNED_DEPS = ("protobuf==4.25.8", "grpcio==1.62.3")
REPO = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
PROTO_FILE = "train_supervisor/v1/supervisor.proto"
TOOLS_DIR = pathlib.Path.home() / ".cache" / "train-supervisor" / "grpcio-tools-1.62.3"


def ensure_tools() -> None:
    if (TOOLS_DIR / "grpc_tools").is_dir():
        return
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(TOOLS_DIR),
            GRPC_TOOLS_PIN,
            *PINNED_DEPS,
        ],
        check=True,
    )


def generate(out_dir: pathlib.Path) -> None:
    ensure_tools()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from grpc_tools import protoc; sys.exit(protoc.main(sys.argv))",
            f"-I{PROTO_ROOT}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO_ROOT / PROTO_FILE),
        ],
        check=True,
        env={"PYTHONPATH": str(TOOLS_DIR), "PATH": "/usr/bin:/bin"},
    )


if __name__ == "__main__":
    generate(REPO)
    print(f"generated train_supervisor/v1 from proto/{PROTO_FILE}")
