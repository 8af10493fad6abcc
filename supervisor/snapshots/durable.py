"""Durable snapshots: committed steps as torch.save files in a directory that outlives the pod.

Layout under `root` (e.g. a mounted volume or bucket mount):

    <root>/<run_id>/node-<n>/step-<012d step>/rank-<r>.pt    one per rank of this node
    <root>/<run_id>/node-<n>/step-<012d step>/MANIFEST.json  written last
    <root>/<run_id>/node-<n>/step-<012d step>.tmp-<pid>/     a step being written (or left
                                                            by a writer that died)

`torch.load("rank-<r>.pt")` (weights_only=True is fine) returns the rank's state exactly as it
was passed to `Snapshots.save`; the file also holds the snapshot image's tensor table
(train_supervisor/torch_format.py), so the image can be restored to an arena bit for bit.
MANIFEST.json: {"format": "train-supervisor-durable", "version": 1, "run_id", "node_rank",
"step", "generation", "written_at" (Unix seconds), "ranks": [{"rank", "file", "bytes",
"crc32c" (of the whole file), "image_checksum", "manifest_len", "payload_len"}]}.

A step is written into its temp directory, every file fsynced, MANIFEST.json last, then the
directory is renamed to its final name and the parent fsynced: a step directory is complete
or absent. No torch here: the sidecar does the writing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crc32c

from supervisor.snapshots.persist_policy import steps_to_prune
from supervisor.snapshots.restore import DURABLE
from supervisor.snapshots.store import free_slot
from supervisor.snapshots.throttle import Throttle
from train_supervisor.arena import CorruptSnapshot, RankArena, SnapshotImage
from train_supervisor.steps import NO_STEP
from train_supervisor.torch_format import read_torch_zip, write_torch_zip

FORMAT = "train-supervisor-durable"
VERSION = 1
MANIFEST = "MANIFEST.json"
_STEP = re.compile(r"step-(\d{12})")
_TEMP = re.compile(r"step-\d{12}\.tmp-(\d+)")
_READ_CHUNK = 4 << 20
SYNC_EVERY_BYTES = 64 << 20
_RANK_INTS = ("rank", "bytes", "crc32c", "image_checksum", "manifest_len", "payload_len")


class DurableError(OSError):
    """Writing or reading the durable directory failed; the message names the path and why."""


@dataclass(frozen=True)
class PersistedStep:
    step: int
    bytes: int
    seconds: float


def _why(err: OSError) -> str:
    code = errno.errorcode.get(err.errno or 0, "")
    return f"{err.strerror or err}" + (f" ({code})" if code else "")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_crc(path: Path) -> tuple[int, int]:
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            crc = crc32c.crc32c(chunk, crc)
            size += len(chunk)
    return int(crc), size


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class DurableStore:
    """One node's durable snapshots of one run, a snapshot store (supervisor/snapshots/store.py).
    One writer per node directory."""

    name = DURABLE

    def __init__(self, root: Path, run_id: str, node_rank: int, bytes_per_s: float = 0.0) -> None:
        if not run_id or run_id in (".", "..") or "/" in run_id or "\0" in run_id:
            raise ValueError(f"run_id must be one path component, not {run_id!r}")
        if node_rank < 0:
            raise ValueError(f"node_rank must be >= 0, not {node_rank}")
        self.run_id, self.node_rank = run_id, node_rank
        self.directory = Path(root) / run_id / f"node-{node_rank}"
        self.bytes_per_s = bytes_per_s  # what put writes at most (0: no cap)

    def step_dir(self, step: int) -> Path:
        return self.directory / f"step-{step:012d}"

    # ------------------------------------------------------------ write
    def put(
        self,
        step: int,
        generation: int,
        images: Sequence[SnapshotImage],
        stopped: Callable[[], bool],
    ) -> None:
        """persist, paced at the cap. Not stopped by a new generation: a step being written
        is worth finishing, and persist never overwrites a copy a restore reads."""
        self.persist(step, generation, list(images), Throttle(self.bytes_per_s).pace)

    def persist(
        self,
        step: int,
        generation: int,
        images: list[SnapshotImage],
        pace: Callable[[int], None],
    ) -> PersistedStep:
        """Write `images` (this node's ranks at `step`) as a complete step directory.

        A step already persisted is left as it is. DurableError (no partial step is left,
        older steps are untouched) names the path and the reason (ENOSPC, EROFS, ...).
        """
        if step < 0 or any(image.step != step for image in images):
            raise ValueError(f"images {[i.step for i in images]} are not all of step {step}")
        final = self.step_dir(step)
        with contextlib.suppress(CorruptSnapshot):
            done = self._manifest(final)["ranks"]
            return PersistedStep(step, sum(int(r["bytes"]) for r in done), 0.0)
        began = time.monotonic()
        temp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        where = self.directory
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.remove_stale()
            where = temp
            shutil.rmtree(temp, ignore_errors=True)  # our own earlier, failed attempt
            temp.mkdir()
            ranks = []
            for image in sorted(images, key=lambda i: i.rank):
                where = temp / f"rank-{image.rank}.pt"
                ranks.append(self._write_rank(where, image, pace))
            where = temp / MANIFEST
            record = {
                "format": FORMAT, "version": VERSION, "run_id": self.run_id,
                "node_rank": self.node_rank, "step": step, "generation": generation,
                "written_at": time.time(), "ranks": ranks,
            }  # fmt: skip
            with open(where, "x", encoding="utf-8") as f:
                json.dump(record, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _fsync(temp)
            if final.exists():  # a directory there without a readable manifest: not a step
                where = final
                shutil.rmtree(final)
            where = final
            os.rename(temp, final)
            _fsync(self.directory)  # the rename itself is durable
        except OSError as err:
            shutil.rmtree(temp, ignore_errors=True)
            raise DurableError(
                err.errno, f"{where}: cannot persist step {step}: {_why(err)}"
            ) from err
        except BaseException:  # e.g. a malformed image (ValueError): still no partial step
            shutil.rmtree(temp, ignore_errors=True)
            raise
        total = sum(int(r["bytes"]) for r in ranks)
        return PersistedStep(step, total, time.monotonic() - began)

    def _write_rank(
        self, path: Path, image: SnapshotImage, pace: Callable[[int], None]
    ) -> dict[str, Any]:
        with open(path, "xb") as f:
            unsynced = 0

            def pace_on_disk(nbytes: int) -> None:
                # To the disk as it goes, not the page cache: else the cap paces memory
                # copies and the final fsync writes the whole file at full speed.
                nonlocal unsynced
                unsynced += nbytes
                if unsynced >= SYNC_EVERY_BYTES:
                    f.flush()
                    os.fdatasync(f.fileno())
                    unsynced = 0
                pace(nbytes)

            crc = write_torch_zip(f, image, pace_on_disk)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        return {
            "rank": image.rank, "file": path.name, "bytes": size, "crc32c": crc,
            "image_checksum": image.checksum, "manifest_len": len(image.manifest),
            "payload_len": len(image.payload),
        }  # fmt: skip

    # ------------------------------------------------------------- read
    def steps(self) -> list[int]:
        """Complete steps, ascending: a MANIFEST.json that parses, and every file it lists
        there with the size it says (a file lost or cut short is no step to restore)."""
        return sorted(s for s in self._step_dirs() if self._complete(self.step_dir(s)))

    def _step_dirs(self) -> list[int]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [int(m.group(1)) for m in map(_STEP.fullmatch, names) if m is not None]

    def _complete(self, directory: Path) -> bool:
        try:
            ranks = self._manifest(directory)["ranks"]
            return bool(ranks) and all(
                os.stat(directory / r["file"]).st_size == r["bytes"] for r in ranks
            )
        except (CorruptSnapshot, OSError):
            return False

    def load(self, step: int, rank: int) -> SnapshotImage:
        """Rank `rank`'s image at `step`, file and image checksums verified (CorruptSnapshot)."""
        directory = self.step_dir(step)
        manifest = self._manifest(directory)
        entry = next((r for r in manifest["ranks"] if r.get("rank") == rank), None)
        if entry is None:
            raise CorruptSnapshot(f"{directory / MANIFEST}: no entry for rank {rank}")
        path = directory / str(entry["file"])
        try:
            crc, size = _file_crc(path)
            if (size, crc) != (entry["bytes"], entry["crc32c"]):
                raise CorruptSnapshot(
                    f"{path}: {size} bytes with CRC-32C {crc:#010x}, {MANIFEST} says "
                    f"{entry['bytes']} bytes with {entry['crc32c']:#010x}"
                )
            data, payload = read_torch_zip(path)
        except FileNotFoundError as err:
            raise CorruptSnapshot(f"{path}: missing, {MANIFEST} lists it") from err
        except ValueError as err:
            raise CorruptSnapshot(str(err)) from err
        except OSError as err:
            raise DurableError(err.errno, f"{path}: cannot read: {_why(err)}") from err
        checksum = int(crc32c.crc32c(payload, crc32c.crc32c(data)))
        want = (entry["manifest_len"], entry["payload_len"], entry["image_checksum"])
        if (len(data), len(payload), checksum) != want:
            raise CorruptSnapshot(
                f"{path}: rebuilt image has manifest {len(data)} bytes, payload "
                f"{len(payload)} bytes, checksum {checksum:#010x}; {MANIFEST} says "
                f"{entry['manifest_len']}, {entry['payload_len']}, {entry['image_checksum']:#010x}"
            )
        generation = int(manifest["generation"])
        return SnapshotImage(rank, step, generation, data, memoryview(payload), checksum)

    def get(self, step: int, into: RankArena) -> list[str]:
        into.store(free_slot(into, NO_STEP), self.load(step, into.rank))
        return []

    def _manifest(self, directory: Path) -> dict[str, Any]:
        path = directory / MANIFEST
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            ok = (
                record["format"] == FORMAT and record["version"] == VERSION
                and record["step"] == int(directory.name.removeprefix("step-"))
                and isinstance(record["generation"], int) and isinstance(record["ranks"], list)
                and all(
                    isinstance(r, dict) and all(isinstance(r.get(k), int) for k in _RANK_INTS)
                    and isinstance(r.get("file"), str) and "/" not in r["file"]
                    for r in record["ranks"]
                )
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CorruptSnapshot(f"{path}: unreadable: {err}") from err
        if not ok:
            raise CorruptSnapshot(f"{path}: not a {FORMAT} v{VERSION} manifest of its step")
        return dict(record)

    # ------------------------------------------------------------ prune
    def prune(self, keep: int) -> list[int]:
        """Delete all but the newest `keep` complete steps, and incomplete ones older than
        the newest complete step; returns the steps removed."""
        found = self._step_dirs()
        complete = [s for s in found if self._complete(self.step_dir(s))]
        removed = steps_to_prune(complete, keep, set(found) - set(complete))
        for step in removed:
            self.remove(step)
        self.remove_stale()
        return removed

    def drop_after(self, step: int) -> list[str]:
        dropped = [old for old in self.steps() if old > step]
        for old in dropped:
            self.remove(old)
        return [f"durable step {old}" for old in dropped]

    def remove(self, step: int) -> bool:
        """Delete `step` (e.g. one past a fallback's restore point); False if it is not there."""
        final = self.step_dir(step)
        doomed = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        try:
            # Renamed first: a delete cut short never leaves a step that looks complete.
            os.rename(final, doomed)
            shutil.rmtree(doomed)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise DurableError(err.errno, f"{final}: cannot remove: {_why(err)}") from err
        return True

    def remove_stale(self) -> list[Path]:
        """Remove temp directories whose writer process is gone; returns them."""
        stale = []
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.directory):
                match = _TEMP.fullmatch(name)
                pid = int(match.group(1)) if match else os.getpid()
                if pid != os.getpid() and not _alive(pid):
                    stale.append(self.directory / name)
                    shutil.rmtree(self.directory / name, ignore_errors=True)
        return stale
