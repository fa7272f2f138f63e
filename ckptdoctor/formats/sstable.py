"""LevelDB-style sorted tables (TensorFlow's `.index` and V1 checkpoint files): reader and builder."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.formats.bytesource import ByteSource
from ckptdoctor.formats.crc import crc32c, mask, unmask
from ckptdoctor.model import CheckpointError
from ckptdoctor.typed import NamedTuple

if TYPE_CHECKING:
    from typing import BinaryIO

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5  # compression type byte + masked CRC
NO_COMPRESSION, SNAPPY = 0, 1
BLOCK_SIZE = 262144  # TF's Options.block_size: a data block is flushed once it reaches this
DATA_RESTART_INTERVAL = 16

# Caps that keep hostile bytes from allocating or looping without bound.
MAX_BLOCK_SIZE = 1 << 30


class TableError(CheckpointError):
    """The table's structure is damaged; the message says where."""


_ONE_BYTE_VARINTS = tuple(bytes((value,)) for value in range(0x80))


def encode_varint(value: int) -> bytes:
    if 0 <= value < 0x80:  # most lengths, dtypes and shard ids: the writer encodes several per tensor
        return _ONE_BYTE_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes, pos: int, limit: int | None = None) -> tuple[int, int]:
    """(value, position after it); raises TableError on a varint that runs past `limit`."""
    limit = len(data) if limit is None else limit
    result = shift = 0
    while True:
        if pos >= limit or shift > 63:
            raise TableError("varint runs past the end of its block")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


class BlockHandle(NamedTuple):
    offset: int
    size: int

    def encode(self) -> bytes:
        return encode_varint(self.offset) + encode_varint(self.size)


def _decode_handle(data: bytes, pos: int) -> tuple[BlockHandle, int]:
    offset, pos = decode_varint(data, pos)
    size, pos = decode_varint(data, pos)
    return BlockHandle(offset, size), pos


def block_entries(contents: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of one block, keys rebuilt from their shared prefixes."""
    if len(contents) < 4:
        raise TableError("block shorter than its restart count")
    (num_restarts,) = struct.unpack_from("<I", contents, len(contents) - 4)
    if num_restarts * 4 + 4 > len(contents):
        raise TableError("block restart array larger than the block")
    limit = len(contents) - 4 - 4 * num_restarts
    pos, key = 0, b""
    while pos < limit:
        shared, pos = decode_varint(contents, pos, limit)
        non_shared, pos = decode_varint(contents, pos, limit)
        value_len, pos = decode_varint(contents, pos, limit)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise TableError("block entry runs past the end of its block")
        key = key[:shared] + contents[pos : pos + non_shared]
        pos += non_shared
        yield key, contents[pos : pos + value_len]
        pos += value_len


class TableReader:
    """Reads a table's blocks by byte range, checking every block CRC as TensorFlow does."""

    def __init__(self, source: ByteSource) -> None:
        self.source = source
        size = source.size()
        if size < FOOTER_SIZE:
            raise TableError(f"{source.name}: {size} bytes is too short for a checkpoint index (footer is 48)")
        footer = source.read(size - FOOTER_SIZE, FOOTER_SIZE)
        lo, hi = struct.unpack_from("<II", footer, 40)
        if (hi << 32 | lo) != MAGIC:
            raise TableError(f"{source.name}: not a TensorFlow checkpoint table (bad footer magic)")
        try:
            self.metaindex_handle, pos = _decode_handle(footer, 0)
            self.index_handle, _ = _decode_handle(footer, pos)
        except TableError:
            raise TableError(f"{source.name}: damaged footer") from None
        self.index = self.read_block(self.index_handle, "index block")

    def read_block(self, handle: BlockHandle, what: str = "block") -> bytes:
        """A block's contents after checking its trailer CRC and decompressing it."""
        name = self.source.name
        end = handle.offset + handle.size + TRAILER_SIZE
        if handle.size > MAX_BLOCK_SIZE:
            raise TableError(f"{name}: {what} claims {handle.size} bytes, over the block size cap ({MAX_BLOCK_SIZE})")
        if end > self.source.size() - FOOTER_SIZE:
            raise TableError(f"{name}: {what} at offset {handle.offset} runs past the end of the file")
        raw = self.source.read(handle.offset, handle.size + TRAILER_SIZE)
        contents, kind = raw[: handle.size], raw[handle.size]
        (stored,) = struct.unpack_from("<I", raw, handle.size + 1)
        if crc32c(raw[: handle.size + 1]) != unmask(stored):
            raise TableError(f"{name}: {what} at offset {handle.offset} fails its checksum (file is corrupt)")
        if kind == NO_COMPRESSION:
            return contents
        if kind == SNAPPY:
            import cramjam

            try:
                return bytes(cramjam.snappy.decompress_raw(contents))
            except Exception:
                raise TableError(f"{name}: {what} at offset {handle.offset} is not valid Snappy data") from None
        raise TableError(f"{name}: {what} at offset {handle.offset} has unknown compression type {kind}")

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of the table in stored order; any damaged block raises TableError."""
        for _separator, handle_bytes in block_entries(self.index):
            handle, _ = _decode_handle(handle_bytes, 0)
            yield from block_entries(self.read_block(handle, "data block"))

    def read_all(self) -> tuple[list[tuple[bytes, bytes]], list[str]]:
        """Every readable (key, value), and one message per damaged data block that had to be skipped.

        The footer and index block must be sound (else TableError): without them nothing can be found."""
        records: list[tuple[bytes, bytes]] = []
        damage: list[str] = []
        for _separator, handle_bytes in block_entries(self.index):
            handle, _ = _decode_handle(handle_bytes, 0)
            try:
                records.extend(block_entries(self.read_block(handle, "data block")))
            except TableError as error:
                damage.append(str(error))
        return records, damage


# ---- writing -------------------------------------------------------------------------------------


class _BlockBuilder:
    def __init__(self, restart_interval: int) -> None:
        self.restart_interval = restart_interval
        self.buffer = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last_key = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.restart_interval:
            limit = min(len(key), len(self.last_key))
            while shared < limit and key[shared] == self.last_key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buffer))
            self.counter = 0
        self.buffer += encode_varint(shared) + encode_varint(len(key) - shared) + encode_varint(len(value))
        self.buffer += key[shared:] + value
        self.last_key = key
        self.counter += 1

    def size_estimate(self) -> int:
        return len(self.buffer) + 4 * len(self.restarts) + 4

    def empty(self) -> bool:
        return not self.buffer

    def finish(self) -> bytes:
        return (
            bytes(self.buffer)
            + struct.pack(f"<{len(self.restarts)}I", *self.restarts)
            + struct.pack("<I", len(self.restarts))
        )


def shortest_separator(start: bytes, limit: bytes) -> bytes:
    """LevelDB's FindShortestSeparator: a short key k with start <= k < limit."""
    common = min(len(start), len(limit))
    diff = 0
    while diff < common and start[diff] == limit[diff]:
        diff += 1
    if diff < common:
        byte = start[diff]
        if byte < 0xFF and byte + 1 < limit[diff]:
            return start[:diff] + bytes([byte + 1])
    return start


def short_successor(key: bytes) -> bytes:
    """LevelDB's FindShortSuccessor: a short key k >= key."""
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes([byte + 1])
    return key


class TableBuilder:
    """Writes a table byte-for-byte as TensorFlow's BundleWriter does; keys must arrive sorted."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.offset = 0
        self.data_block = _BlockBuilder(DATA_RESTART_INTERVAL)
        self.index_block = _BlockBuilder(1)
        self.last_key: bytes | None = None
        self.pending_handle: BlockHandle | None = None

    def add(self, key: bytes, value: bytes) -> None:
        if self.last_key is not None and key <= self.last_key:
            raise ValueError(f"keys must be strictly increasing: {key!r} after {self.last_key!r}")
        if self.pending_handle is not None:
            self.index_block.add(shortest_separator(self.last_key or b"", key), self.pending_handle.encode())
            self.pending_handle = None
        self.data_block.add(key, value)
        self.last_key = key
        if self.data_block.size_estimate() >= BLOCK_SIZE:
            self._flush()

    def _flush(self) -> None:
        if self.data_block.empty():
            return
        self.pending_handle = self._write_block(self.data_block.finish())
        self.data_block = _BlockBuilder(DATA_RESTART_INTERVAL)

    def _write_block(self, contents: bytes) -> BlockHandle:
        handle = BlockHandle(self.offset, len(contents))
        trailer_type = bytes([NO_COMPRESSION])
        self.out.write(contents + trailer_type + struct.pack("<I", mask(crc32c(contents + trailer_type))))
        self.offset += len(contents) + TRAILER_SIZE
        return handle

    def finish(self) -> None:
        self._flush()
        metaindex = self._write_block(_BlockBuilder(DATA_RESTART_INTERVAL).finish())
        if self.pending_handle is not None:
            self.index_block.add(short_successor(self.last_key or b""), self.pending_handle.encode())
            self.pending_handle = None
        index = self._write_block(self.index_block.finish())
        handles = (metaindex.encode() + index.encode()).ljust(40, b"\0")
        self.out.write(handles + struct.pack("<II", MAGIC & 0xFFFFFFFF, MAGIC >> 32))
