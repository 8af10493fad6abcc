"""The snapshot writer stops when its Snapshots goes away or is closed.

A failure unwinds the script in place and the next run of it writes the same
arena at once: a copy of the dead run must not go on beside it. Real arena
files, real threads; the copy of one tensor waits for the test, so the writer
is caught mid-copy without any timing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from launcher.processes import SCRIPT_ADDRESS_ENV
from launcher.snapshot import Snapshots, read_state
from launcher.snapshot_payload import fill, plan
from train_supervisor.arena import SNAPSHOT_DIR_ENV, SlotState


def worker_env(directory: Path) -> dict[str, str]:
    # Nothing listens on the discard port: reports of finished copies fail (and are logged).
    return {
        "RANK": "0",
        "TORCHELASTIC_RUN_ID": "writer-test",
        SNAPSHOT_DIR_ENV: str(directory),
        SCRIPT_ADDRESS_ENV: "127.0.0.1:9",
    }


def gated(reached: threading.Event, release: threading.Event) -> torch.Tensor:
    """A tensor whose copy into the arena says it began, then waits for `release`."""

    class Gated(torch.Tensor):
        @classmethod
        def __torch_function__(
            cls,
            func: Callable[..., Any],
            types: Any,
            args: tuple[Any, ...] = (),
            kwargs: Optional[dict[str, Any]] = None,
        ) -> Any:
            if func is torch.Tensor.copy_:
                reached.set()
                release.wait(60)
            return super().__torch_function__(func, types, args, kwargs or {})

    return torch.zeros(1024).as_subclass(Gated)


def state_with_gate(reached: threading.Event, release: threading.Event) -> dict[str, Any]:
    return {"a": torch.ones(4096), "gate": gated(reached, release), "b": torch.full((4096,), 7.0)}


def test_fill_stops_between_tensors_once_cancelled() -> None:
    tensors, entries, payload_len, _ = plan({"a": torch.ones(16), "b": torch.full((16,), 2.0)})
    payload = memoryview(bytearray(payload_len))
    checks = iter([False, True])  # cancelled after the first tensor
    assert not fill(payload, entries, tensors, lambda: next(checks))
    first, second = entries
    written = payload[first.offset : first.offset + first.nbytes]
    assert torch.equal(torch.frombuffer(written, dtype=torch.float32), tensors[0])
    assert bytes(payload[second.offset :]) == bytes(payload_len - second.offset)  # untouched
    assert fill(payload, entries, tensors)


def test_closing_mid_copy_abandons_the_write_and_returns_once_the_writer_left_the_arena(
    tmp_path: Path,
) -> None:
    reached, release = threading.Event(), threading.Event()
    snapshots = Snapshots(worker_env(tmp_path))
    snapshots.save(1, state_with_gate(reached, release))
    assert reached.wait(60), "the writer never began the copy"
    closer = threading.Thread(target=snapshots.close)
    closer.start()
    assert snapshots._writer.cancelled.wait(60), "close() did not cancel the copy"
    assert closer.is_alive(), "close() returned while the writer was still copying"
    release.set()
    closer.join(60)
    assert not closer.is_alive()
    header = snapshots.arena.slots()[0]
    assert (header.state, header.step) == (SlotState.WRITING, 1)  # never COMPLETE: never restored
    assert snapshots.arena.find(1) is None
    snapshots.wait_for_copy()  # the pre-step hook is not left waiting


def test_a_dropped_snapshots_stops_its_writer_before_the_next_run_writes(tmp_path: Path) -> None:
    reached, release = threading.Event(), threading.Event()
    old = Snapshots(worker_env(tmp_path))
    old.save(1, state_with_gate(reached, release))
    assert reached.wait(60), "the writer never began the copy"
    writer = old._writer
    holder = [old]
    del old
    # As an unwind does: the script's last reference goes (here in a thread, since it waits).
    dropper = threading.Thread(target=holder.clear)
    dropper.start()
    assert writer.cancelled.wait(60), "the dropped Snapshots did not cancel its copy"
    release.set()
    dropper.join(60)
    assert not dropper.is_alive()
    new = Snapshots(worker_env(tmp_path))
    state = {"w": torch.arange(8192, dtype=torch.float32)}
    new.save(1, state)
    new.flush()
    slot = new.arena.find(1)
    assert slot is not None
    assert torch.equal(read_state(new.arena, slot)["w"], state["w"])
    writer.thread.join(60)
    assert not writer.thread.is_alive()
