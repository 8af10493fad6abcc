"""A worker without torch for the failure-classification tests (tests/e2e/test_oom_and_hardware.py).

Every rank records "<pid-dir>/gen<G>_rank<R>" (its pid) when it starts. Then:
  --hog-rank R   rank R waits until every rank of its generation has started (so the test can
                 see who re-entered in place), then allocates memory, writing every page,
                 until the kernel kills it;
  --xid-rank R   rank R prints the kernel's line for a GPU fallen off the bus and fails;
  the others idle for --idle-s seconds (in small sleeps: an abort can reach them), then end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

CHUNK = 8 << 20
XID_LINE = "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus."


def hog() -> None:
    held: list[bytes] = []
    while True:
        held.append(b"\x01" * CHUNK)  # written, not just mapped: charged to the cgroup


def wait_for_all_ranks(pid_dir: Path, generation: int) -> None:
    world_size = int(os.environ["WORLD_SIZE"])
    while not all((pid_dir / f"gen{generation}_rank{r}").exists() for r in range(world_size)):
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pid-dir", type=Path, required=True)
    parser.add_argument("--hog-rank", type=int, default=-1)
    parser.add_argument("--xid-rank", type=int, default=-1)
    parser.add_argument("--idle-s", type=float, default=30.0)
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    generation = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    (args.pid_dir / f"gen{generation}_rank{rank}").write_text(str(os.getpid()))
    if rank == args.hog_rank:
        wait_for_all_ranks(args.pid_dir, generation)
        hog()
    if rank == args.xid_rank:
        print(XID_LINE, flush=True)
        sys.exit(1)
    deadline = time.monotonic() + args.idle_s
    while time.monotonic() < deadline:
        time.sleep(0.05)


if __name__ == "__main__":
    main()
