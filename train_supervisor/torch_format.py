"""Snapshot images as torch.save files, written and read without torch (the sidecar has none).

A rank's manifest (launcher/worker/snapshot.py writes it into its arena slot), little endian:
  magic b"TSTENSOR" | version u16 | tensor count u32 | data.pkl length u64
  | per tensor: dtype name length u8, dtype name (ascii, e.g. "bfloat16"), ndim u8,
    shape ndim x u64, offset in the payload u64, nbytes u64
  | data.pkl: exactly what torch.save pickles (protocol 2), tensor i stored as data/<i>.

`write_torch_zip` turns an image into the zip torch.save writes, so plain `torch.load` reads it:
  <archive>/data.pkl, .format_version ("1"), .storage_alignment ("64"), byteorder,
  data/0 .. data/<n-1> (each tensor's bytes), version ("3\\n"), and .data/train_supervisor
  (b"TSIMAGE1", payload length u64, then the manifest up to data.pkl) so that the image,
  padding included, can be rebuilt exactly. Records are stored uncompressed, their data on
  64-byte boundaries, laid out as torch's writer (miniz) does: torch.load may compute a
  record's offset from the previous one (torch.utils.serialization.config.load
  .calculate_storage_offsets) instead of reading its header.
"""

from __future__ import annotations

import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import crc32c

from train_supervisor.arena import SnapshotImage

MANIFEST_MAGIC = b"TSTENSOR"
MANIFEST_VERSION = 1
_HEAD = struct.Struct("<8sHIQ")  # magic, version, tensor count, data.pkl length
_DTYPE = struct.Struct("<B")
_SPAN = struct.Struct("<QQ")  # offset, nbytes

IMAGE_RECORD = ".data/train_supervisor"
_IMAGE = struct.Struct("<8sQ")  # magic, payload length; the manifest's head and table follow
_IMAGE_MAGIC = b"TSIMAGE1"

ZIP64_LIMIT = 0xFFFFFFFF  # sizes and offsets from here on need zip64 fields (as in miniz)
_ALIGN = 64  # torch.save's storage alignment: tensor data can be mmapped and used in place
_FORMAT_VERSION = b"3\n"  # what torch.save writes today in <archive>/version
_ARCHIVE = "archive"  # torch's own name when it writes to a buffer
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_EOCD = struct.Struct("<IHHHHIIH")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR = struct.Struct("<IIQI")
_UTF8, _DESCRIPTOR = 0x0800, 0x0008  # general purpose flags

Chunk = Union[bytes, memoryview]


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are in the payload (contiguous, row-major)."""

    dtype: str  # torch's name without "torch.", e.g. "float32"
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def encode_manifest(entries: Iterable[TensorEntry], data_pkl: bytes) -> bytes:
    table = bytearray()
    count = 0
    for entry in entries:
        name = entry.dtype.encode("ascii")
        if not 0 < len(name) < 256 or len(entry.shape) > 255:
            raise ValueError(f"cannot encode tensor entry {entry}: dtype name or rank too long")
        if min((*entry.shape, entry.offset, entry.nbytes), default=0) < 0:
            raise ValueError(f"cannot encode tensor entry {entry}: negative size or offset")
        table += _DTYPE.pack(len(name)) + name + _DTYPE.pack(len(entry.shape))
        table += struct.pack(f"<{len(entry.shape)}Q", *entry.shape)
        table += _SPAN.pack(entry.offset, entry.nbytes)
        count += 1
    return _HEAD.pack(MANIFEST_MAGIC, MANIFEST_VERSION, count, len(data_pkl)) + table + data_pkl


def decode_manifest(manifest: bytes) -> tuple[list[TensorEntry], bytes]:
    """The tensor table and data.pkl of a manifest; ValueError says what is malformed."""
    if len(manifest) < _HEAD.size:
        raise ValueError(f"manifest of {len(manifest)} bytes is shorter than its header")
    magic, version, count, pkl_len = _HEAD.unpack_from(manifest)
    if magic != MANIFEST_MAGIC:
        raise ValueError(f"not a tensor manifest (magic {magic!r}, expected {MANIFEST_MAGIC!r})")
    if version != MANIFEST_VERSION:
        raise ValueError(f"tensor manifest version {version}, this reader knows {MANIFEST_VERSION}")
    entries, at = [], _HEAD.size
    try:
        for _ in range(count):
            (name_len,) = _DTYPE.unpack_from(manifest, at)
            raw = bytes(manifest[at + 1 : at + 1 + name_len])
            at += 1 + name_len
            name = raw.decode("ascii") if len(raw) == name_len else ""
            (ndim,) = _DTYPE.unpack_from(manifest, at)
            shape = struct.unpack_from(f"<{ndim}Q", manifest, at + 1)
            at += 1 + 8 * ndim
            offset, nbytes = _SPAN.unpack_from(manifest, at)
            at += _SPAN.size
            if not name.isidentifier():
                raise ValueError(f"bad dtype name {name!r}")
            entries.append(TensorEntry(name, shape, offset, nbytes))
    except (struct.error, UnicodeDecodeError, ValueError) as err:
        raise ValueError(
            f"tensor manifest entry {len(entries)} of {count} is malformed: {err}"
        ) from err
    if len(manifest) - at != pkl_len:
        raise ValueError(
            f"tensor manifest says data.pkl is {pkl_len} bytes, {len(manifest) - at} follow"
        )
    return entries, bytes(manifest[at:])


class _ZipWriter:
    """An uncompressed zip written front to back, its CRC-32C taken on the way."""

    def __init__(self, out: BinaryIO, pace: Callable[[int], None], zip64_from: int) -> None:
        self.out, self.pace, self.limit = out, pace, zip64_from
        self.pos = self.crc = 0
        self.central: list[bytes] = []

    def emit(self, data: Chunk) -> None:
        self.out.write(data)
        self.crc = crc32c.crc32c(data, self.crc)
        self.pos += len(data)
        self.pace(len(data))

    def record(self, name: str, size: int, chunks: Iterable[Chunk]) -> None:
        big_size, big_pos, offset = size >= self.limit, self.pos >= self.limit, self.pos
        fields = [size, size] * big_size + [offset] * big_pos
        zip64 = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
        raw = name.encode()
        # As torch's getPadding: data starts on a 64-byte boundary, the gap is an "FB" field.
        pad = -(offset + _LOCAL.size + len(raw) + len(zip64) + 4) % _ALIGN
        extra = zip64 + b"FB" + struct.pack("<H", pad) + b"Z" * pad
        flags, need = _UTF8 | (_DESCRIPTOR if size else 0), 45 if zip64 else 20
        # Sizes and CRC follow the data (as miniz does): the data is read once, as it streams.
        self.emit(_LOCAL.pack(0x04034B50, need, flags, 0, 0, 0, 0, 0, 0, len(raw), len(extra)))
        self.emit(raw + extra)
        crc, written = 0, 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            written += len(chunk)
            self.emit(chunk)
        if written != size:
            raise ValueError(f"record {name}: {written} bytes written, {size} announced")
        if size:
            sizes = struct.pack("<QQ" if zip64 else "<II", size, size)
            self.emit(struct.pack("<II", 0x08074B50, crc) + sizes)
        size32 = ZIP64_LIMIT if big_size else size
        offset32 = ZIP64_LIMIT if big_pos else offset
        head = (0x02014B50, need, need, flags, 0, 0, 0, crc, size32, size32, len(raw), len(zip64))
        self.central.append(_CENTRAL.pack(*head, 0, 0, 0, 0, offset32) + raw + zip64)

    def finish(self) -> int:
        start = self.pos
        for entry in self.central:
            self.emit(entry)
        count, size = len(self.central), self.pos - start
        if count >= 0xFFFF or start >= self.limit or size >= self.limit:
            where = self.pos
            self.emit(_EOCD64.pack(0x06064B50, 44, 45, 45, 0, 0, count, count, size, start))
            self.emit(_LOCATOR.pack(0x07064B50, 0, where, 1))
            count, size, start = min(count, 0xFFFF), ZIP64_LIMIT, ZIP64_LIMIT
        self.emit(_EOCD.pack(0x06054B50, 0, 0, count, count, size, start, 0))
        return int(self.crc)


def _slices(view: memoryview, chunk_bytes: int) -> Iterator[memoryview]:
    for at in range(0, len(view), chunk_bytes):
        yield view[at : at + chunk_bytes]


def write_torch_zip(
    out: BinaryIO,
    image: SnapshotImage,
    pace: Callable[[int], None],
    chunk_bytes: int = 4 << 20,
    *,
    zip64_from: int = ZIP64_LIMIT,
) -> int:
    """Write `image` as a torch.save file to `out`; returns the CRC-32C of all bytes written.

    `pace(n)` is called after each n bytes (a bandwidth cap). The payload is streamed in
    `chunk_bytes` slices, never copied whole. `zip64_from`: tests lower it to exercise the
    zip64 fields on small files.
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be > 0, not {chunk_bytes}")
    entries, data_pkl = decode_manifest(image.manifest)
    payload = image.payload.cast("B") if image.payload.format != "B" else image.payload
    for index, entry in enumerate(entries):
        if entry.offset + entry.nbytes > len(payload):
            raise ValueError(
                f"rank {image.rank} step {image.step}: tensor {index} ends at byte "
                f"{entry.offset + entry.nbytes}, past the {len(payload)}-byte payload"
            )
    zw = _ZipWriter(out, pace, zip64_from)

    def small(name: str, data: bytes) -> None:
        zw.record(f"{_ARCHIVE}/{name}", len(data), [data])

    small("data.pkl", data_pkl)
    small(".format_version", b"1")
    small(".storage_alignment", str(_ALIGN).encode())
    small("byteorder", sys.byteorder.encode())  # the payload is in the writing host's order
    for index, entry in enumerate(entries):
        data = payload[entry.offset : entry.offset + entry.nbytes]
        zw.record(f"{_ARCHIVE}/data/{index}", entry.nbytes, _slices(data, chunk_bytes))
    small("version", _FORMAT_VERSION)
    table = image.manifest[: len(image.manifest) - len(data_pkl)]
    small(IMAGE_RECORD, _IMAGE.pack(_IMAGE_MAGIC, len(payload)) + table)
    return zw.finish()


def read_torch_zip(path: Path) -> tuple[bytes, bytearray]:
    """The manifest and payload `write_torch_zip` wrote to `path` (payload padding zero).

    ValueError names the file and what is malformed; the zip's own CRC-32s are verified.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            archive = names[0].partition("/")[0] if names else ""
            raw = zf.read(f"{archive}/{IMAGE_RECORD}")
            if len(raw) < _IMAGE.size or raw[:8] != _IMAGE_MAGIC:
                raise ValueError(f"{IMAGE_RECORD} is not a snapshot image record")
            _, payload_len = _IMAGE.unpack_from(raw)
            manifest = raw[_IMAGE.size :] + zf.read(f"{archive}/data.pkl")
            entries, _ = decode_manifest(manifest)
            payload = bytearray(payload_len)
            view = memoryview(payload)
            for index, entry in enumerate(entries):
                info = zf.getinfo(f"{archive}/data/{index}")
                end = entry.offset + entry.nbytes
                if info.file_size != entry.nbytes or end > payload_len:
                    raise ValueError(
                        f"data/{index} holds {info.file_size} bytes for {entry.nbytes} bytes at "
                        f"{entry.offset} of a {payload_len}-byte payload"
                    )
                with zf.open(info) as member:
                    at = entry.offset
                    while at < end:  # bounded chunks: never a second copy of a whole tensor
                        chunk = member.read(min(end - at, 4 << 20))
                        if not chunk:
                            raise ValueError(f"data/{index} is shorter than {entry.nbytes} bytes")
                        view[at : at + len(chunk)] = chunk
                        at += len(chunk)
                    member.read(1)  # at the end: zipfile checks the record's CRC-32 here
            return manifest, payload
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: not a readable snapshot file: {err}") from err
