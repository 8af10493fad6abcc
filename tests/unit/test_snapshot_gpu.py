"""launcher/worker/snapshot_cuda.py on a GPU: CUDA tensors snapshot through pinned arena memory on a
side stream, and the optimizer's update waits for the copy on the device, not on the host.

Skipped where torch sees no GPU (CI, and every session of this project so far). Run on a GPU
machine with `python bench/gpu_snapshot_check.py`, which runs this file and the GPU figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from snapshot_service import CommittingSupervisor, rank0_env, serve_snapshots

from launcher.worker.snapshot import Snapshots
from launcher.worker.snapshot_payload import read_state
from train_supervisor.arena import RankArena

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def supervisor() -> Iterator[tuple[str, CommittingSupervisor]]:
    with serve_snapshots() as served:
        yield served


def cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}


def test_each_committed_snapshot_holds_the_parameters_of_its_step_bitwise(
    tmp_path: Path, supervisor: tuple[str, CommittingSupervisor]
) -> None:
    torch.manual_seed(0)
    device = torch.device("cuda", 0)
    # Large enough that a copy outlasts a kernel launch: an unordered update would show.
    model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(8)]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    snapshots = Snapshots(rank0_env(supervisor[0], tmp_path))
    expected: dict[int, dict[str, torch.Tensor]] = {}
    batch = torch.randn(512, 2048, device=device)
    for step in range(1, 6):
        model(batch).square().mean().backward()
        optimizer.step()  # the pre-step hook orders this after the last save's copies
        optimizer.zero_grad()
        expected[step] = cpu_copy(model.state_dict())  # synchronous: the truth at this step
        snapshots.save(step, {"model": model.state_dict()})
    snapshots.flush()

    assert snapshots.committed == 5
    pinned = snapshots._device_copier._pinned
    assert pinned, "the arena slots were registered with CUDA (page-locked)"
    with RankArena(tmp_path, 0) as arena:
        for step in (4, 5):  # the two slots
            slot = arena.find(step)
            assert slot is not None, arena.slots()
            saved = read_state(arena, slot)["model"]
            for name, tensor in expected[step].items():
                assert torch.equal(saved[name], tensor), f"step {step}: {name} differs"


def test_buffers_and_cpu_tensors_beside_cuda_ones_are_snapshot_too(
    tmp_path: Path, supervisor: tuple[str, CommittingSupervisor]
) -> None:
    device = torch.device("cuda", 0)
    norm = torch.nn.BatchNorm1d(256).to(device)
    norm(torch.randn(64, 256, device=device))  # running stats: buffers, cloned inside save()
    state = {"norm": norm.state_dict(), "rng": torch.get_rng_state(), "step": 1}
    expected = {"norm": cpu_copy(norm.state_dict()), "rng": torch.get_rng_state().clone()}
    snapshots = Snapshots(rank0_env(supervisor[0], tmp_path))
    snapshots.save(1, state)
    norm(torch.randn(64, 256, device=device) + 5)  # changes the buffers after the save
    snapshots.flush()

    with RankArena(tmp_path, 0) as arena:
        slot = arena.find(1)
        assert slot is not None
        saved = read_state(arena, slot)
    assert saved["step"] == 1
    assert torch.equal(saved["rng"], expected["rng"])
    for name, tensor in expected["norm"].items():
        assert torch.equal(saved["norm"][name], tensor), name
