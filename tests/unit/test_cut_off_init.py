"""A survivor whose init_process_group was cut off joins the next generation's group.

Real gloo, real processes: rank 0 (this test's own process, as a survivor) starts an init that
its peer never joins, as when a generation fails while it forms; after the unwind's clean-up it
forms a group with a fresh rank 1 (a new process, as a warm spare), like the next generation.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from launcher.worker.unwind import destroy_process_groups

PEER = """
import datetime, sys
import torch.distributed as dist
store = dist.FileStore(sys.argv[1], 2)
dist.init_process_group("gloo", store=store, rank=1, world_size=2,
                        timeout=datetime.timedelta(seconds=float(sys.argv[2])))
dist.barrier()
dist.destroy_process_group()
"""
WAIT_S = 60.0  # for the peer's group, its torch import included, on a busy machine


@pytest.mark.timeout(240)
def test_a_survivor_cut_off_in_init_forms_the_next_group_with_a_fresh_peer(
    tmp_path: Path,
) -> None:
    # Started first: its torch import overlaps the cut-off init below.
    peer = subprocess.Popen(
        [sys.executable, "-c", PEER, str(tmp_path / "next"), str(WAIT_S)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with pytest.raises(RuntimeError):  # nobody joins: the generation never formed
            dist.init_process_group(
                "gloo",
                store=dist.FileStore(str(tmp_path / "cut"), 2),
                rank=0,
                world_size=2,
                timeout=datetime.timedelta(seconds=1),
            )
        assert not dist.is_initialized()
        destroy_process_groups()  # the survivor's unwind
        dist.init_process_group(
            "gloo",
            store=dist.FileStore(str(tmp_path / "next"), 2),
            rank=0,
            world_size=2,
            timeout=datetime.timedelta(seconds=WAIT_S),
        )
        dist.barrier()
        dist.destroy_process_group()
        _, err = peer.communicate(timeout=WAIT_S)
        assert peer.returncode == 0, err
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
        destroy_process_groups()
