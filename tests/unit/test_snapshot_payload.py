"""The payload copy that checksums as it goes (launcher/snapshot_payload.py)."""

from __future__ import annotations

import crc32c
import torch

from launcher.snapshot_payload import ALIGN, PIECE, fill, layout


def test_the_sum_made_while_copying_is_the_sum_of_every_byte_written() -> None:
    tensors = [
        torch.arange(PIECE // 4 * 3 + 5, dtype=torch.float32),  # pieces, a short last one, padding
        torch.arange(12, dtype=torch.float64).reshape(3, 4).t(),  # strided: copied whole
        torch.tensor([True, False, True]),
        torch.empty(0),
        torch.ones(7, dtype=torch.bfloat16),
    ]
    entries, size = layout(tensors)
    assert [e.offset % ALIGN for e in entries] == [0] * len(tensors)
    memory = bytearray(b"\xff" * size)  # a reused slot: the padding must be zeroed
    manifest_sum = crc32c.crc32c(b"the manifest comes first")
    summed = fill(memoryview(memory), entries, tensors, manifest_sum)
    assert summed == crc32c.crc32c(bytes(memory), manifest_sum)
    written = torch.frombuffer(memory, dtype=torch.uint8)
    ends = [e.offset for e in entries[1:]] + [size]
    for entry, end, tensor in zip(entries, ends, tensors):
        expected = tensor.contiguous().reshape(-1).view(torch.uint8)
        assert torch.equal(written[entry.offset : entry.offset + entry.nbytes], expected)
        assert not written[entry.offset + entry.nbytes : end].any(), "padding is zero"
