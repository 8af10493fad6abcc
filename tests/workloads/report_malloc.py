"""Records how glibc's malloc serves this worker: where a 16 MiB block comes from and goes."""

import ctypes
import json
import os
import sys

BLOCK = 16 * 2**20


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def main() -> None:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo2()
    block = libc.malloc(BLOCK)
    held = libc.mallinfo2()
    libc.free(block)
    freed = libc.mallinfo2()
    seen = {
        "tunables": os.environ.get("GLIBC_TUNABLES"),
        "mmapped": held.hblkhd - before.hblkhd >= BLOCK,  # its own mapping, not the heap
        "kept_after_free": freed.fordblks - held.fordblks >= BLOCK,  # free in the heap now
    }
    with open(os.path.join(sys.argv[1], f"rank_{os.environ['RANK']}.json"), "w") as handle:
        json.dump(seen, handle)


if __name__ == "__main__":
    main()
