"""Streaming writer of single-shard TF V2 bundles that copies tensor bytes without decoding them."""

from __future__ import annotations

import os
from pathlib import Path

from ckptdoctor.formats import protos
from ckptdoctor.formats.bytesource import write_all
from ckptdoctor.formats.sstable import TableBuilder
from ckptdoctor.formats.tf_bundle import BundleEntry, BundleReader, data_file_name
from ckptdoctor.writer.atomic import fsync_directory, temp_beside


def _header() -> bytes:
    header = protos.BundleHeaderProto(num_shards=1)
    header.version.producer = 1
    return header.SerializeToString()


class BundleWriter:
    """Collects entries, streams their bytes into one data file, and writes the sorted index last.

    Until `commit` renames them, everything lives in temporary files beside the output; a kill at any
    moment leaves either no checkpoint at the output prefix or a complete one.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.data_path = data_file_name(prefix, 0, 1)
        self.index_path = prefix + ".index"
        self._data_temp = temp_beside(self.data_path)
        self._index_temp = temp_beside(self.index_path)
        self._data_fd = os.open(self._data_temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._offset = 0
        self._entries: dict[bytes, bytes] = {}

    def copy(self, reader: BundleReader, entry: BundleEntry, key: bytes | None = None) -> None:
        """Append one tensor from `reader`, bytes and checksum exactly as stored there."""
        key = entry.key if key is None else key
        if key in self._entries:
            raise ValueError(f"duplicate key {key!r}")
        proto = protos.BundleEntryProto.FromString(entry.proto)
        if not entry.num_slices:  # a partitioned variable's full entry has no bytes of its own
            reader.copy_bytes(entry, self._data_fd)
            proto.shard_id = 0
            proto.offset = self._offset
            self._offset += entry.size
        self._entries[key] = proto.SerializeToString()

    def add(self, key: bytes, dtype_code: int, shape: tuple[int, ...], raw: bytes, masked_crc: int) -> None:
        """Append a tensor given as its stored bytes (little-endian, or TF's string layout) and masked CRC."""
        if key in self._entries:
            raise ValueError(f"duplicate key {key!r}")
        proto = protos.BundleEntryProto(dtype=dtype_code, offset=self._offset, size=len(raw), crc32c=masked_crc)
        proto.shape.SetInParent()  # TF always writes the shape, `12 00` for a scalar
        for size in shape:
            proto.shape.dim.add(size=size)
        write_all(self._data_fd, raw)
        self._offset += len(raw)
        self._entries[key] = proto.SerializeToString()

    def commit(self) -> None:
        """Make the data file durable, write the index, and rename data then index into place."""
        os.fsync(self._data_fd)
        os.close(self._data_fd)
        self._data_fd = -1
        with open(self._index_temp, "wb") as out:
            table = TableBuilder(out)
            table.add(b"", _header())
            for key in sorted(self._entries):
                table.add(key, self._entries[key])
            table.finish()
            out.flush()
            os.fsync(out.fileno())
        # An older index at this prefix goes first: new data beside an old index would look complete.
        Path(self.index_path).unlink(missing_ok=True)
        os.replace(self._data_temp, self.data_path)
        os.replace(self._index_temp, self.index_path)
        fsync_directory(Path(self.prefix).parent)

    def abort(self) -> None:
        if self._data_fd >= 0:
            os.close(self._data_fd)
            self._data_fd = -1
        for temp in (self._data_temp, self._index_temp):
            Path(temp).unlink(missing_ok=True)
