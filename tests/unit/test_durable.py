"""supervisor/snapshots/durable.py on real files: persisted steps load with plain torch.load in a
fresh
interpreter, restore to an arena bit for bit, and survive corruption, full and read-only disks."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from mounts import remount, tmpfs
from test_torch_format import assert_same, training_state

from launcher.worker.snapshot_payload import read_state, write_state
from supervisor.snapshots.durable import MANIFEST, DurableError, DurableStore, _file_crc
from supervisor.snapshots.throttle import Throttle
from train_supervisor.arena import CorruptSnapshot, RankArena, SnapshotImage

RUN = "run-7"
NO_PACE = Throttle(0).pace

# Runs in `python -I` outside the repo: only torch, never our packages.
LOADER = textwrap.dedent(
    """
    import sys
    import torch
    from torch.utils.serialization import config

    def same(expected, got, where):
        assert type(got) is type(expected), (where, type(got), type(expected))
        if isinstance(expected, torch.Tensor):
            assert (got.dtype, got.shape) == (expected.dtype, expected.shape), where
            flat = lambda t: t.reshape(-1).view(torch.uint8)
            assert torch.equal(flat(got), flat(expected)), where
            return 1
        if isinstance(expected, dict):
            assert list(got) == list(expected), where
            return sum(same(expected[k], got[k], f"{where}[{k!r}]") for k in expected)
        if isinstance(expected, (list, tuple)):
            assert len(got) == len(expected), where
            return sum(same(e, g, f"{where}[{i}]") for i, (e, g) in enumerate(zip(expected, got)))
        assert got == expected, (where, got, expected)
        return 0

    path, reference = sys.argv[1:]
    expected = torch.load(reference)
    tensors = same(expected, torch.load(path), "state")  # weights_only=True, the default
    # mmap, offsets computed from the zip layout as torch's own files allow, checked against
    # each record's header (TORCH_SERIALIZATION_DEBUG=1)
    config.load.calculate_storage_offsets = True
    same(expected, torch.load(path, mmap=True), "mmapped state")
    ours = sorted(m for m in sys.modules if m.split(".")[0] in
                  ("train_supervisor", "supervisor", "launcher"))
    assert not ours, f"imported {ours}"
    print("tensors", tensors)
    """
)


def image_of(tmp_path: Path, rank: int, step: int, state: Any) -> SnapshotImage:
    with RankArena(tmp_path / "shm", rank) as arena:
        slot = step % 2
        write_state(arena, slot, step, generation=4, state=state)
        image = arena.image(slot)
        # A copy: the arena is closed (and its slot reused) by the time the image is written.
        return SnapshotImage(
            rank, step, image.generation, image.manifest, memoryview(image.payload.tobytes()),
            image.checksum,
        )  # fmt: skip


def small_state(seed: int) -> dict[str, Any]:
    return {"w": torch.full((1024,), float(seed)), "seed": seed}


def temps(store: DurableStore) -> list[str]:
    return sorted(p.name for p in store.directory.iterdir() if ".tmp-" in p.name)


def test_a_persisted_rank_loads_with_plain_torch_load_in_a_fresh_interpreter(
    tmp_path: Path,
) -> None:
    states = {0: training_state(), 1: {**training_state(), "rank": 1}}
    images = [image_of(tmp_path, r, 12, s) for r, s in states.items()]
    store = DurableStore(tmp_path / "durable", RUN, node_rank=3)
    done = store.persist(12, 4, images, NO_PACE)
    step_dir = tmp_path / "durable" / RUN / "node-3" / "step-000000000012"
    assert sorted(p.name for p in step_dir.iterdir()) == [MANIFEST, "rank-0.pt", "rank-1.pt"]
    assert done.bytes == sum((step_dir / f"rank-{r}.pt").stat().st_size for r in states)
    record = json.loads((step_dir / MANIFEST).read_text())
    assert (record["run_id"], record["node_rank"], record["step"], record["generation"]) == (
        RUN, 3, 12, 4,
    )  # fmt: skip
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for rank, state in states.items():
        reference = outside / f"reference-{rank}.pt"
        torch.save(state, reference)
        loaded = subprocess.run(
            [sys.executable, "-I", "-c", LOADER, str(step_dir / f"rank-{rank}.pt"), str(reference)],
            cwd=outside, capture_output=True, text=True, timeout=120,
            env={**os.environ, "TORCH_SERIALIZATION_DEBUG": "1"},
        )  # fmt: skip
        assert loaded.returncode == 0, loaded.stderr
        assert "tensors 25" in loaded.stdout  # 4 model, 12 Adam (3 a parameter), 9 others


def test_load_rebuilds_the_image_and_a_fresh_arena_takes_it(tmp_path: Path) -> None:
    state = training_state()
    image = image_of(tmp_path, 2, 8, state)
    store = DurableStore(tmp_path / "durable", RUN, 0)
    store.persist(8, 4, [image], NO_PACE)
    loaded = store.load(8, 2)
    assert (loaded.rank, loaded.step, loaded.generation) == (2, 8, 4)
    assert loaded.manifest == image.manifest and loaded.payload.tobytes() == image.payload
    with RankArena(tmp_path / "restored", 2) as arena:
        info = arena.store(1, loaded)  # checksum verified against the image's
        assert info.checksum == image.checksum
        assert_same(state, read_state(arena, 1))


def test_persisting_a_step_again_leaves_it_as_it_is(tmp_path: Path) -> None:
    store = DurableStore(tmp_path / "durable", RUN, 0)
    first = store.persist(3, 1, [image_of(tmp_path, 0, 3, small_state(3))], NO_PACE)
    pt = store.step_dir(3) / "rank-0.pt"
    before = pt.stat().st_mtime_ns
    again = store.persist(3, 1, [image_of(tmp_path, 0, 3, small_state(9))], NO_PACE)
    assert (again.step, again.bytes) == (3, first.bytes) and pt.stat().st_mtime_ns == before


def test_a_flipped_byte_in_a_file_is_a_corrupt_snapshot(tmp_path: Path) -> None:
    store = DurableStore(tmp_path / "durable", RUN, 0)
    store.persist(5, 1, [image_of(tmp_path, 0, 5, small_state(5))], NO_PACE)
    pt = store.step_dir(5) / "rank-0.pt"
    raw = bytearray(pt.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    pt.write_bytes(bytes(raw))
    with pytest.raises(CorruptSnapshot, match=r"rank-0\.pt: .* CRC-32C 0x.*MANIFEST\.json says"):
        store.load(5, 0)
    # Corrupted before its CRC-32C was taken: the zip's CRC-32 and the image checksum still tell.
    record = json.loads((store.step_dir(5) / MANIFEST).read_text())
    record["ranks"][0]["crc32c"] = _file_crc(pt)[0]
    (store.step_dir(5) / MANIFEST).write_text(json.dumps(record))
    with pytest.raises(CorruptSnapshot, match=r"rank-0\.pt"):
        store.load(5, 0)


def test_a_truncated_manifest_or_a_missing_file_is_never_restored(tmp_path: Path) -> None:
    store = DurableStore(tmp_path / "durable", RUN, 0)
    for step in (1, 2):
        images = [image_of(tmp_path, r, step, small_state(step)) for r in (0, 1)]
        store.persist(step, 1, images, NO_PACE)
    manifest = store.step_dir(2) / MANIFEST
    manifest.write_bytes(manifest.read_bytes()[:40])
    assert store.steps() == [1]
    with pytest.raises(CorruptSnapshot, match=r"step-000000000002/MANIFEST\.json: unreadable"):
        store.load(2, 0)
    (store.step_dir(1) / "rank-1.pt").unlink()
    with pytest.raises(CorruptSnapshot, match=r"rank-1\.pt: missing, MANIFEST\.json lists it"):
        store.load(1, 1)
    with pytest.raises(CorruptSnapshot, match="no entry for rank 5"):
        store.load(1, 5)
    assert store.load(1, 0).step == 1


def test_a_full_disk_fails_cleanly_and_older_steps_stay(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk") as disk:
        store = DurableStore(disk, RUN, 0)
        store.persist(1, 1, [image_of(tmp_path, 0, 1, small_state(1))], NO_PACE)
        filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with contextlib.suppress(OSError):
                while True:
                    os.write(filler, bytes(4096))
        finally:
            os.close(filler)
        with pytest.raises(DurableError) as caught:
            store.persist(2, 1, [image_of(tmp_path, 0, 2, small_state(2))], NO_PACE)
        assert caught.value.errno == errno.ENOSPC
        message = str(caught.value)
        assert "step-000000000002.tmp-" in message and "(ENOSPC)" in message, message
        assert temps(store) == [] and store.steps() == [1]
        assert store.load(1, 0).step == 1
        (disk / "filler").unlink()
        store.persist(2, 1, [image_of(tmp_path, 0, 2, small_state(2))], NO_PACE)
        assert store.steps() == [1, 2] and store.load(2, 0).step == 2


def test_a_read_only_disk_fails_cleanly_and_works_again_once_writable(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk") as disk:
        store = DurableStore(disk, RUN, 0)
        store.persist(1, 1, [image_of(tmp_path, 0, 1, small_state(1))], NO_PACE)
        remount(disk, "ro")
        with pytest.raises(DurableError, match=r"step-000000000002\.tmp-\d+: .*\(EROFS\)"):
            store.persist(2, 1, [image_of(tmp_path, 0, 2, small_state(2))], NO_PACE)
        assert temps(store) == [] and store.steps() == [1]
        assert store.load(1, 0).step == 1
        remount(disk, "rw")
        store.persist(2, 1, [image_of(tmp_path, 0, 2, small_state(2))], NO_PACE)
        assert store.steps() == [1, 2]


def test_persisting_is_paced_to_the_bandwidth_cap(tmp_path: Path) -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    rate = 50_000.0
    throttle = Throttle(rate, clock=lambda: now[0], sleep=sleep)
    images = [image_of(tmp_path, r, 4, small_state(r)) for r in (0, 1)]
    done = DurableStore(tmp_path / "durable", RUN, 0).persist(4, 1, images, throttle.pace)
    assert throttle.sent == done.bytes > 8000
    assert sum(slept) >= done.bytes / rate - 1e-9
    assert len(slept) > 10, "paced as it writes, not once at the end"


def test_prune_keeps_the_newest_steps_and_clears_dead_writers_leftovers(tmp_path: Path) -> None:
    store = DurableStore(tmp_path / "durable", RUN, 0)
    for step in (10, 20, 30, 40, 50):
        store.persist(step, 1, [image_of(tmp_path, 0, step, small_state(step))], NO_PACE)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    leftover = store.directory / f"step-000000000060.tmp-{dead}"
    leftover.mkdir()
    (leftover / "rank-0.pt").write_bytes(b"half")
    assert store.steps() == [10, 20, 30, 40, 50]
    assert store.prune(2) == [10, 20, 30]
    assert store.steps() == [40, 50] and not leftover.exists()
    assert sorted(p.name for p in store.directory.iterdir()) == [
        "step-000000000040", "step-000000000050",
    ]  # fmt: skip
    assert store.prune(2) == []
    assert store.load(40, 0).step == 40
    assert store.remove(50) and not store.remove(50)
    assert store.steps() == [40]


def test_a_part_with_a_file_lost_or_cut_short_is_no_step(tmp_path: Path) -> None:
    """Listed by steps() only when every file its manifest names is there, at its size: the
    restore then takes the newest complete step without trying a broken one first."""
    store = DurableStore(tmp_path / "durable", RUN, 0)
    for step in (1, 2, 3):
        images = [image_of(tmp_path, r, step, small_state(step)) for r in (0, 1)]
        store.persist(step, 1, images, NO_PACE)
    cut = store.step_dir(3) / "rank-1.pt"
    cut.write_bytes(cut.read_bytes()[:100])  # half-written by hand, a failing disk
    (store.step_dir(2) / "rank-0.pt").unlink()
    assert store.steps() == [1]


def test_prune_never_keeps_an_incomplete_step_in_place_of_a_complete_one(
    tmp_path: Path,
) -> None:
    store = DurableStore(tmp_path / "durable", RUN, 0)
    for step in (10, 20, 30, 40):
        store.persist(step, 1, [image_of(tmp_path, 0, step, small_state(step))], NO_PACE)
    (store.step_dir(30) / "rank-0.pt").unlink()  # 30 is broken, older than complete 40
    (store.step_dir(40) / MANIFEST).unlink()  # ... and so is 40: the newest complete is 20
    assert store.steps() == [10, 20]
    assert store.prune(2) == [], "both complete steps stay; 30 and 40 are newer than 20"
    store.persist(50, 1, [image_of(tmp_path, 0, 50, small_state(50))], NO_PACE)
    assert store.prune(2) == [10, 30, 40]
    assert store.steps() == [20, 50]
    assert sorted(p.name for p in store.directory.iterdir()) == [
        "step-000000000020", "step-000000000050",
    ]  # fmt: skip
