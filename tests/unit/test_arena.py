"""train_supervisor/arena.py: one rank's two snapshot slots, on real files and real mmaps."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounts import tmpfs

from train_supervisor.arena import (
    HEADER_SIZE,
    PAYLOAD_ALIGN,
    ArenaFull,
    CorruptSnapshot,
    RankArena,
    SlotState,
    remove_arena,
)


def write(arena: RankArena, slot: int, step: int, manifest: bytes, payload: bytes) -> None:
    view = arena.begin_write(slot, step, generation=1, manifest=manifest, payload_len=len(payload))
    assert len(view) == len(payload) and not view.readonly
    view[:] = payload
    view.release()
    arena.finish_write(slot)


def payload_of(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def assert_reads(arena: RankArena, slot: int, step: int, manifest: bytes, payload: bytes) -> None:
    info, got_manifest, view = arena.read(slot)
    assert (info.slot, info.step, info.state) == (slot, step, SlotState.COMPLETE)
    assert got_manifest == manifest
    assert view.readonly and len(view) == len(payload) and view.tobytes() == payload
    view.release()


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[RankArena]:
    with RankArena(tmp_path / "job", rank=2) as a:
        yield a


def test_a_new_arena_is_empty_and_creates_no_slot_files(tmp_path: Path) -> None:
    with RankArena(tmp_path / "a" / "job", rank=0) as arena:
        assert (tmp_path / "a" / "job").stat().st_mode & 0o777 == 0o700
        assert [s.state for s in arena.slots()] == [SlotState.EMPTY, SlotState.EMPTY]
        assert arena.find(0) is None
        with pytest.raises(CorruptSnapshot, match=r"rank-0\.slot1: slot is EMPTY"):
            arena.read(1)
    assert list((tmp_path / "a" / "job").iterdir()) == []


def test_write_read_and_the_other_slot_is_untouched(arena: RankArena) -> None:
    p0 = payload_of(10_000, 1)
    write(arena, 0, 5, b'{"step": 5}', p0)
    assert_reads(arena, 0, 5, b'{"step": 5}', p0)
    info = arena.slots()[0]
    assert (info.state, info.step, info.generation, info.rank) == (SlotState.COMPLETE, 5, 1, 2)
    assert (info.manifest_len, info.payload_len) == (11, 10_000)
    assert info.payload_offset == PAYLOAD_ALIGN == 4096
    assert arena.slots()[1].state is SlotState.EMPTY
    assert arena.find(5) == 0

    before = arena.path(0).read_bytes()
    p1 = payload_of(20_000, 2)
    write(arena, 1, 6, b'{"step": 6}', p1)
    assert arena.path(0).read_bytes() == before
    assert_reads(arena, 0, 5, b'{"step": 5}', p0)
    assert_reads(arena, 1, 6, b'{"step": 6}', p1)
    assert (arena.find(5), arena.find(6), arena.find(7)) == (0, 1, None)
    assert [p.name for p in sorted(arena.directory.iterdir())] == ["rank-2.slot0", "rank-2.slot1"]


def test_a_restarted_process_reads_both_slots(tmp_path: Path) -> None:
    with RankArena(tmp_path, rank=2) as arena:
        write(arena, 0, 5, b"m5", b"five" * 100)
        write(arena, 1, 6, b"m6", b"six" * 100)
    # A separate interpreter, as a restarted rank (or the supervisor) would be.
    code = (
        "import sys; from pathlib import Path; from train_supervisor.arena import RankArena\n"
        "a = RankArena(Path(sys.argv[1]), 2)\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules\n"
        "for s in (0, 1):\n"
        "    info, m, p = a.read(s); print(info.step, m.decode(), p.tobytes()[:8].decode())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], check=True, capture_output=True, text=True
    ).stdout
    assert out.split("\n")[:2] == ["5 m5 fivefive", "6 m6 sixsixsi"]
    with RankArena(tmp_path, rank=2) as again:
        assert_reads(again, 0, 5, b"m5", b"five" * 100)
        assert_reads(again, 1, 6, b"m6", b"six" * 100)


def test_a_flipped_payload_byte_fails_the_checksum(arena: RankArena) -> None:
    write(arena, 0, 5, b"manifest", payload_of(5000, 3))
    offset = arena.slots()[0].payload_offset + 4321
    flip(arena.path(0), offset)
    with pytest.raises(CorruptSnapshot, match=r"rank-2\.slot0: checksum mismatch for step 5"):
        arena.read(0)
    info, _, view = arena.read(0, verify=False)  # the header alone is still fine
    assert info.state is SlotState.COMPLETE and arena.find(5) == 0
    view.release()
    flip(arena.path(0), offset)
    arena.read(0)[2].release()


def test_a_flipped_manifest_byte_fails_the_checksum(arena: RankArena) -> None:
    write(arena, 0, 5, b"manifest", b"payload")
    flip(arena.path(0), HEADER_SIZE + 2)
    with pytest.raises(CorruptSnapshot, match="checksum mismatch"):
        arena.read(0)


@pytest.mark.parametrize("offset", [0, 9, 12, 16, 40, 48, 52])
def test_a_garbled_header_is_corrupt_and_slots_does_not_raise(
    arena: RankArena, offset: int
) -> None:
    write(arena, 0, 5, b"manifest", b"payload")
    write(arena, 1, 6, b"manifest", b"payload")
    flip(arena.path(0), offset)
    info = arena.slots()[0]
    assert info.state is SlotState.CORRUPT
    assert str(arena.path(0)) in info.error
    assert arena.slots()[1].state is SlotState.COMPLETE
    assert arena.find(5) is None and arena.find(6) == 1
    with pytest.raises(CorruptSnapshot, match=r"rank-2\.slot0: (not a snapshot|header checksum)"):
        arena.read(0)


def test_an_unfinished_write_is_not_readable_after_a_restart(tmp_path: Path) -> None:
    with RankArena(tmp_path, rank=2) as arena:
        write(arena, 0, 5, b"m", b"old" * 10)
        view = arena.begin_write(0, 7, generation=2, manifest=b"m7", payload_len=30)
        view[:15] = b"x" * 15  # killed mid-copy
        view.release()
        assert arena.find(5) is None and arena.find(7) is None
    with RankArena(tmp_path, rank=2) as again:
        info = again.slots()[0]
        assert (info.state, info.step, info.generation) == (SlotState.WRITING, 7, 2)
        assert again.find(7) is None and again.find(5) is None
        with pytest.raises(CorruptSnapshot, match="slot is WRITING, not COMPLETE"):
            again.read(0)
        with pytest.raises(RuntimeError, match="finish_write without begin_write"):
            again.finish_write(0)  # another process's write is not ours to finish


def test_a_slot_grows_and_shrinks_its_use_while_the_other_stays(arena: RankArena) -> None:
    other = payload_of(3000, 9)
    write(arena, 1, 4, b"other", other)
    before = arena.path(1).read_bytes()
    for step, (manifest, size) in enumerate(
        [(b"small", 10_000), (b"x" * 500, 40_000), (b"tiny", 5_000)], start=5
    ):
        payload = payload_of(size, step)
        write(arena, 0, step, manifest, payload)
        assert_reads(arena, 0, step, manifest, payload)
    assert arena.path(0).stat().st_size >= 40_000  # never shrinks
    assert arena.path(1).read_bytes() == before
    assert_reads(arena, 1, 4, b"other", other)


def test_a_reader_in_another_object_follows_a_growing_slot(tmp_path: Path) -> None:
    with RankArena(tmp_path, rank=0) as writer, RankArena(tmp_path, rank=0) as reader:
        write(writer, 0, 1, b"m", b"a" * 100)
        assert_reads(reader, 0, 1, b"m", b"a" * 100)
        kept = reader.read(0)[2]  # a view held across the remap stays valid
        write(writer, 0, 2, b"m", b"b" * 1_000_000)
        assert_reads(reader, 0, 2, b"m", b"b" * 1_000_000)
        assert kept.tobytes() == b"b" * 100  # same file: it sees the new bytes
        kept.release()


def mapped(path: Path) -> bool:
    return str(path) in Path("/proc/self/maps").read_text()


def test_close_unmaps_both_slots(tmp_path: Path) -> None:
    arena = RankArena(tmp_path, rank=0)
    write(arena, 0, 1, b"m", b"z" * 4096)
    write(arena, 1, 2, b"m", b"y" * 4096)
    assert_reads(arena, 0, 1, b"m", b"z" * 4096)
    assert mapped(arena.path(0)) and mapped(arena.path(1))
    arena.close()
    assert not mapped(arena.path(0)) and not mapped(arena.path(1))


def test_close_with_views_still_held_does_not_fail(tmp_path: Path) -> None:
    arena = RankArena(tmp_path, rank=0)
    write(arena, 0, 1, b"m", b"z" * 4096)
    _, _, view = arena.read(0)
    pending = arena.begin_write(1, 2, 1, b"m", 100)
    arena.close()  # mmap.close() would raise BufferError here
    assert view.tobytes() == b"z" * 4096
    pending[:] = b"q" * 100
    assert mapped(arena.path(0)) and mapped(arena.path(1))  # the views keep their mappings
    view.release()
    pending.release()
    gc.collect()
    assert not mapped(arena.path(0)) and not mapped(arena.path(1))
    with pytest.raises(ValueError, match="closed"):
        arena.slots()
    arena.close()  # twice is fine
    assert arena.path(0).exists() and arena.path(1).exists()


def test_another_ranks_slot_is_refused(tmp_path: Path) -> None:
    with RankArena(tmp_path, rank=3) as three:
        write(three, 0, 5, b"m", b"rank three")
    (tmp_path / "rank-3.slot0").rename(tmp_path / "rank-2.slot0")
    with RankArena(tmp_path, rank=2) as two:
        assert two.slots()[0].state is SlotState.CORRUPT and two.find(5) is None
        with pytest.raises(CorruptSnapshot, match=r"rank-2\.slot0: holds rank 3's snapshot"):
            two.read(0)


def test_a_truncated_file_is_corrupt_not_a_crash(arena: RankArena) -> None:
    write(arena, 0, 5, b"manifest", b"p" * 10_000)
    arena.close()
    os.truncate(arena.path(0), 5000)
    with RankArena(arena.directory, rank=2) as again:
        assert again.slots()[0].state is SlotState.CORRUPT
        with pytest.raises(CorruptSnapshot, match=r"header needs \d+ bytes, file has 5000"):
            again.read(0)


def test_bad_arguments(arena: RankArena) -> None:
    with pytest.raises(ValueError, match="slot must be 0 or 1"):
        arena.begin_write(2, 1, 1, b"", 1)
    with pytest.raises(ValueError, match="payload_len"):
        arena.begin_write(0, 1, 1, b"", -1)
    with pytest.raises(ValueError, match="rank"):
        RankArena(arena.directory, rank=-1)


def test_remove_arena(tmp_path: Path) -> None:
    with RankArena(tmp_path / "job", rank=0) as arena:
        write(arena, 0, 1, b"m", b"p")
    remove_arena(tmp_path / "job")
    assert not (tmp_path / "job").exists()
    remove_arena(tmp_path / "job")  # already gone is fine


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "tmpfs", "size=1m") as mount:
        yield mount


def test_a_full_filesystem_raises_arena_full_and_keeps_the_complete_slot(
    small_tmpfs: Path,
) -> None:
    with RankArena(small_tmpfs / "job", rank=0) as arena:
        write(arena, 0, 5, b"m", b"k" * 100_000)
        for slot in (1, 0):  # the other slot, and the complete slot itself
            with pytest.raises(ArenaFull) as raised:
                arena.begin_write(slot, 6, 1, b"m", 4 << 20)
            message = str(raised.value)
            assert isinstance(raised.value, OSError) and raised.value.errno == 28
            assert str(arena.path(slot)) in message
            assert f"to {(4 << 20) + PAYLOAD_ALIGN} bytes" in message and "bytes free of" in message
            assert_reads(arena, 0, 5, b"m", b"k" * 100_000)
        assert arena.slots()[1].state is SlotState.EMPTY
        write(arena, 1, 6, b"m", b"fits" * 1000)  # a snapshot that fits still works
        assert_reads(arena, 1, 6, b"m", b"fits" * 1000)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_on_dev_shm() -> None:
    directory = Path("/dev/shm") / f"train-supervisor-test-{uuid.uuid4().hex}" / "job"
    try:
        with RankArena(directory, rank=1) as arena:
            payload = payload_of(1 << 20, 7)
            write(arena, 0, 9, b"shm", payload)
            assert_reads(arena, 0, 9, b"shm", payload)
            assert arena.find(9) == 0
    finally:
        remove_arena(directory.parent)
    assert not directory.parent.exists()


def test_pin_never_waits_for_a_writer_and_holds_off_the_next(tmp_path: Path) -> None:
    reader, writer = RankArena(tmp_path, 0), RankArena(tmp_path, 0)  # two processes' views
    assert not reader.pin(0), "no file yet: nothing to pin"
    write(writer, 0, 1, b"m", b"p" * 10)
    with writer.exclusive(0):
        assert not reader.pin(0), "a writer is in the slot"
    assert reader.pin(0)
    other_reader = RankArena(tmp_path, 0)
    assert other_reader.pin(0), "readers share a slot"
    other_reader.unpin(0)
    reader.unpin(0)
    with writer.exclusive(0):  # both pins gone: the writer goes in at once
        pass
    for arena in (reader, writer, other_reader):
        arena.close()


def test_copy_in_leaves_the_copy_writing_until_finish_write_checks_it(tmp_path: Path) -> None:
    """Staging unpins the rank's slot after copy_in: the checksum then reads only the copy."""
    source, copy = RankArena(tmp_path / "own", 0), RankArena(tmp_path / "staged", 0)
    write(source, 0, 3, b"m", payload_of(50_000, 3))
    image = source.image(0)
    copy.copy_in(1, image)
    assert copy.slots()[1].state is SlotState.WRITING
    write(source, 0, 4, b"m", payload_of(50_000, 4))  # the rank saves over its slot now
    info = copy.finish_write(1, expect=image.checksum)
    assert (info.state, info.step) == (SlotState.COMPLETE, 3)
    assert_reads(copy, 1, 3, b"m", payload_of(50_000, 3))

    copy.copy_in(0, source.image(0))  # step 4; then a byte of the copy goes bad
    with open(copy.path(0), "r+b") as f:
        f.seek(PAYLOAD_ALIGN + 10)
        f.write(b"\xff")
    with pytest.raises(CorruptSnapshot, match="copy of step 4 has checksum"):
        copy.finish_write(0, expect=source.slots()[0].checksum)
    assert copy.slots()[0].state is SlotState.WRITING, "never restored"
    source.close()
    copy.close()
