"""train_supervisor/torch_format.py and the worker's manifests (launcher/worker/snapshot.py):
snapshot
images written as torch.save files without torch, on real arenas and real files."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crc32c
import pytest
import torch

from launcher.worker.snapshot_payload import read_state, write_state
from train_supervisor.arena import CorruptSnapshot, RankArena, SnapshotImage
from train_supervisor.torch_format import (
    TensorEntry,
    decode_manifest,
    encode_manifest,
    read_torch_zip,
    write_torch_zip,
)

REPO = Path(__file__).resolve().parents[2]


def training_state() -> dict[str, Any]:
    """A model and its Adam state after one step, and the odd tensors a state dict may hold."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).square().sum().backward()
    optim.step()
    return {
        "model": model.state_dict(),
        "optim": optim.state_dict(),
        "bf16": torch.randn(7).bfloat16(),
        "half": torch.randn(2, 3).half(),
        "int64": torch.arange(-3, 6, dtype=torch.int64).reshape(3, 3),
        "mask": torch.tensor([True, False, True]),
        "complex": torch.randn(3, dtype=torch.complex64),
        "uint16": torch.tensor([0, 7, 65535], dtype=torch.int32).to(torch.uint16),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 4),
        "nested": [1, (2.5, "three", torch.ones(2, dtype=torch.int8)), [None, True]],
        "step": 11,
        "name": "run",
    }


def assert_same(expected: Any, got: Any, where: str = "state") -> None:
    """Equal structure and values; tensors bitwise (dtype, shape and bytes)."""
    assert type(got) is type(expected), where
    if isinstance(expected, torch.Tensor):
        assert (got.dtype, got.shape) == (expected.dtype, expected.shape), where
        as_bytes = [t.reshape(-1).view(torch.uint8) for t in (got, expected)]
        assert torch.equal(*as_bytes), where
    elif isinstance(expected, dict):
        assert list(got) == list(expected), where
        for key in expected:
            assert_same(expected[key], got[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for i, (e, g) in enumerate(zip(expected, got)):
            assert_same(e, g, f"{where}[{i}]")
    else:
        assert got == expected, where


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[RankArena]:
    with RankArena(tmp_path / "shm", rank=0) as a:
        yield a


def torch_save_pickle(state: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(buffer) as zf:
        [name] = [n for n in zf.namelist() if n.endswith("/data.pkl")]
        return zf.read(name)


def write_file(path: Path, image: SnapshotImage, **kwargs: Any) -> int:
    with open(path, "wb") as out:
        return write_torch_zip(out, image, lambda n: None, **kwargs)


def test_the_manifest_carries_exactly_the_data_pkl_torch_save_writes(arena: RankArena) -> None:
    state = training_state()
    write_state(arena, 0, step=3, generation=1, state=state)
    entries, data_pkl = decode_manifest(arena.image(0).manifest)
    assert data_pkl == torch_save_pickle(state)
    assert [e.dtype for e in entries][-3:] == ["float32", "float32", "int8"]
    assert all(e.offset % 64 == 0 for e in entries)
    assert_same(state, read_state(arena, 0))


def test_equal_states_give_equal_payloads_even_over_older_bytes(tmp_path: Path) -> None:
    state = training_state()
    with RankArena(tmp_path / "a", 0) as used, RankArena(tmp_path / "b", 0) as fresh:
        noise = {k: torch.full_like(v, 7) if isinstance(v, torch.Tensor) else v
                 for k, v in state.items()}  # fmt: skip
        write_state(used, 0, 1, 1, {"x": torch.full((4096,), -1.0), **noise})
        write_state(used, 0, 2, 1, state)  # the same slot: old bytes under the padding
        write_state(fresh, 1, 2, 1, state)
        assert used.image(0).payload.tobytes() == fresh.image(1).payload.tobytes()
        assert used.image(0).checksum == fresh.image(1).checksum


def test_manifest_round_trip_and_malformed_manifests() -> None:
    entries = [TensorEntry("float32", (2, 3), 0, 24), TensorEntry("bool", (), 64, 1)]
    manifest = encode_manifest(entries, b"pickle")
    assert decode_manifest(manifest) == (entries, b"pickle")
    for bad, says in [
        (manifest[:10], "shorter than its header"),
        (b"X" + manifest[1:], "not a tensor manifest"),
        (manifest[:8] + b"\x09\x00" + manifest[10:], "version 9"),
        (manifest[:30], "entry 0 of 2 is malformed"),
        (manifest + b"!", "data.pkl is 6 bytes, 7 follow"),
    ]:
        with pytest.raises(ValueError, match=says):
            decode_manifest(bad)
    with pytest.raises(ValueError, match="negative"):
        encode_manifest([TensorEntry("float32", (-1,), 0, 4)], b"")


def test_a_file_loads_with_torch_load_and_rebuilds_the_image_exactly(
    arena: RankArena, tmp_path: Path
) -> None:
    state = training_state()
    write_state(arena, 0, step=5, generation=2, state=state)
    image = arena.image(0)
    path = tmp_path / "rank-0.pt"
    crc = write_file(path, image, chunk_bytes=100)
    assert crc == crc32c.crc32c(path.read_bytes())
    assert_same(state, torch.load(path, weights_only=True))
    manifest, payload = read_torch_zip(path)
    assert manifest == image.manifest and bytes(payload) == image.payload.tobytes()
    assert crc32c.crc32c(payload, crc32c.crc32c(manifest)) == image.checksum


def test_zip64_fields_are_read_by_torch_and_zipfile(arena: RankArena, tmp_path: Path) -> None:
    state = training_state()
    write_state(arena, 0, step=5, generation=2, state=state)
    image = arena.image(0)
    path = tmp_path / "zip64.pt"
    write_file(path, image, zip64_from=0)  # every size and offset in zip64 fields
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
    assert_same(state, torch.load(path, weights_only=True))
    manifest, payload = read_torch_zip(path)
    assert (manifest, bytes(payload)) == (image.manifest, image.payload.tobytes())


def test_writing_streams_in_chunks_and_paces_every_byte(arena: RankArena) -> None:
    write_state(arena, 0, 1, 1, {"big": torch.arange(100_000, dtype=torch.float32)})
    image = arena.image(0)
    writes: list[int] = []
    paced: list[int] = []

    class Sink(io.BytesIO):
        def write(self, data: Any) -> int:
            writes.append(len(data))
            return super().write(data)

    sink = Sink()
    write_torch_zip(sink, image, paced.append, chunk_bytes=4096)
    assert sum(paced) == sum(writes) == len(sink.getvalue())
    assert max(writes) <= 4096, "the payload goes out in chunks, never whole"
    assert len(paced) > 400_000 // 4096


def test_a_flipped_data_byte_is_caught_by_the_zip_crc(arena: RankArena, tmp_path: Path) -> None:
    write_state(arena, 0, 1, 1, {"w": torch.arange(64, dtype=torch.float32)})
    path = tmp_path / "x.pt"
    write_file(path, arena.image(0))
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"\x00\x00\x04\x42")] ^= 1  # in 33.0, a float32 of tensor "w"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"x\.pt: not a readable snapshot file.*CRC"):
        read_torch_zip(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable snapshot file"):
        read_torch_zip(path)


def test_an_old_pickle_manifest_is_a_corrupt_snapshot_not_a_crash(arena: RankArena) -> None:
    view = arena.begin_write(0, 1, 1, pickle.dumps(({"a": 1}, [])), 0)
    del view
    arena.finish_write(0)
    with pytest.raises(CorruptSnapshot, match=r"rank-0\.slot0: cannot decode the snapshot"):
        read_state(arena, 0)


def test_the_writer_and_the_store_never_import_torch(tmp_path: Path) -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); "
        "import train_supervisor.torch_format, supervisor.snapshots.durable, "
        "supervisor.snapshots.persist_policy; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
