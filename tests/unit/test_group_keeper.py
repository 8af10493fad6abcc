"""launcher/worker/unwind.py:ProcessGroupKeeper with a real gloo process group (world size 1)."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from launcher.worker.unwind import ProcessGroupKeeper


def test_the_keeper_holds_a_generations_groups_after_the_script_destroyed_them(
    tmp_path: Path,
) -> None:
    keeper = ProcessGroupKeeper()
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        keeper.on_step()
        [group] = list(dist.distributed_c10d._world.pg_map)
    finally:
        dist.destroy_process_group()
    assert not dist.distributed_c10d._world.pg_map, "the script let go of its group"
    keeper.on_step()  # a step after that (or none) drops nothing
    assert list(keeper._groups.values()) == [group]
    del group
    keeper.release()
    assert not keeper._groups
