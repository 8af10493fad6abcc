"""Snapshots of CUDA tensors: device-to-host copies on a side stream into pinned arena memory.

The training stream never waits on the host for a snapshot. `save()` records an event on each
device's current stream (the state as of the step); the writer thread queues every device
tensor's copy on that device's side stream, after that event, straight into the arena slot,
which is registered with CUDA (page-locked) so the copy is a DMA that overlaps the next forward
and backward; then it records a `copied` event. The optimizer's pre-step hook makes the current
stream wait for `copied` (on the device: the host goes on launching kernels). The writer waits
on the host for `copied` before it checksums the slot; it holds the source tensors until then,
so the caching allocator never hands their memory to new work while the copy reads it.

Never run on a GPU in this project so far (its CI machines have none): see README, limitations.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch


def cuda_devices(tensors: Iterable[torch.Tensor]) -> set[torch.device]:
    return {t.device for t in tensors if t.is_cuda}


@dataclass
class DeviceSync:
    """One save's events: `ready` on the training streams, `copied` on the side streams."""

    ready: dict[torch.device, torch.cuda.Event] = field(default_factory=dict)
    copied: dict[torch.device, torch.cuda.Event] = field(default_factory=dict)

    @classmethod
    def after_current_work(cls, devices: set[torch.device]) -> DeviceSync:
        """On the training thread, in save(): the state is what the queued work leaves."""
        sync = cls()
        for device in devices:
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(torch.cuda.current_stream(device))
            sync.ready[device] = event
        return sync

    def order_training_after_copies(self) -> None:
        """On the training thread: its next kernels (the optimizer's) wait for the copies."""
        for device, event in self.copied.items():
            torch.cuda.current_stream(device).wait_event(event)

    def wait_for_copies(self) -> None:
        """On the writer thread: the bytes are in the arena."""
        for event in self.copied.values():
            event.synchronize()


class DeviceCopier:
    """The writer thread's side streams and the arena ranges it registered with CUDA."""

    def __init__(self) -> None:
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._pinned: dict[int, tuple[int, int]] = {}  # slot -> (address, bytes) registered
        self._pin_failed = False

    def pin(self, slot: int, payload: memoryview) -> None:
        """Page-lock a slot's payload (once per mapping): a DMA target, not a staged copy."""
        if self._pin_failed or not len(payload):
            return
        where = (torch.frombuffer(payload, dtype=torch.uint8).data_ptr(), len(payload))
        if self._pinned.get(slot) == where:
            return
        self.unpin(slot)  # the slot grew and was remapped
        cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]
        error = cudart.cudaHostRegister(where[0], where[1], 0)
        if int(error) != 0:
            # Copies still work into pageable memory, each a synchronous staged copy.
            self._pin_failed = True
            print(
                f"[train-supervisor] cannot page-lock the snapshot arena (cudaHostRegister: "
                f"error {int(error)}); device-to-host copies go through pageable memory",
                file=sys.stderr,
                flush=True,
            )
            return
        self._pinned[slot] = where

    def unpin(self, slot: int) -> None:
        where = self._pinned.pop(slot, None)
        if where is not None:
            torch.cuda.cudart().cudaHostUnregister(where[0])  # type: ignore[no-untyped-call]

    def close(self) -> None:
        for slot in list(self._pinned):
            self.unpin(slot)

    def copy(self, sync: DeviceSync, target: torch.Tensor, source: torch.Tensor) -> None:
        """Queue one tensor's copy after its device's `ready`; `target` is arena memory."""
        device = source.device
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
        with torch.cuda.stream(stream):
            if device not in sync.copied:  # first tensor of this device in this save
                stream.wait_event(sync.ready[device])
                # Blocking: the writer sleeps in wait_for_copies rather than spin a core.
                sync.copied[device] = torch.cuda.Event(blocking=True)  # type: ignore[no-untyped-call]
            target.copy_(source, non_blocking=True)

    def issued(self, sync: DeviceSync) -> None:
        """Every copy of the save is queued: `copied` marks their end on each side stream."""
        for device, event in sync.copied.items():
            event.record(self._streams[device])
