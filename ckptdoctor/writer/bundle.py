"""Streaming writer of TF V2 bundles that copies tensor bytes without decoding them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ckptdoctor.formats import protos
from ckptdoctor.formats.bytesource import write_all
from ckptdoctor.formats.sstable import TableBuilder
from ckptdoctor.formats.tf_bundle import BundleEntry, data_file_name
from ckptdoctor.writer.atomic import create_exclusive, fsync_directory, temp_beside
from ckptdoctor.writer.signals import signals_deferred

if TYPE_CHECKING:
    from ckptdoctor.formats.object_graph import ObjectGraph


@runtime_checkable
class BundleSource(Protocol):
    """What the bundle writer needs from a TF bundle's reader: its index entries and their stored bytes."""

    @property
    def location(self) -> str: ...

    @property
    def entries(self) -> Mapping[bytes, BundleEntry]:
        """Every index entry by key, slices of partitioned variables included."""
        ...

    @property
    def object_graph(self) -> ObjectGraph | None:
        """The TF2 object graph, None for a name-based (TF1) checkpoint."""
        ...

    def copy_bytes(self, entry: BundleEntry, out_fd: int) -> None:
        """Append the entry's stored bytes to `out_fd`."""
        ...


def _header(num_shards: int) -> bytes:
    header = protos.BundleHeaderProto(num_shards=num_shards)
    header.version.producer = 1
    return header.SerializeToString()


class BundleWriter:
    """Collects entries, streams their bytes into the data shards, and writes the sorted index last.

    Each tensor goes to the shard with the fewest bytes so far. Until `commit` renames them, everything
    lives in temporary files beside the output; a kill at any moment leaves either no checkpoint at the
    output prefix or a complete one.
    """

    def __init__(self, prefix: str, num_shards: int = 1) -> None:
        self.prefix = prefix
        self.num_shards = num_shards
        self.data_paths = [data_file_name(prefix, shard, num_shards) for shard in range(num_shards)]
        self.index_path = prefix + ".index"
        self._temps = [temp_beside(path) for path in self.data_paths]
        self._index_temp = temp_beside(self.index_path)
        self._fds: list[int] = []
        self._created: list[str] = []  # temporaries this writer made, the only files abort removes
        try:
            for temp in self._temps:
                self._fds.append(create_exclusive(temp))
                self._created.append(temp)
        except BaseException:
            self.abort()
            raise
        self._offsets = [0] * num_shards
        self._entries: dict[bytes, bytes] = {}
        self.last_size = 0  # bytes the last copy or add wrote, for progress reporting

    @property
    def data_path(self) -> str:
        return self.data_paths[0]

    def _place(self, key: bytes) -> int:
        if key in self._entries:
            raise ValueError(f"duplicate key {key!r}")
        return min(range(self.num_shards), key=self._offsets.__getitem__)

    def copy(self, reader: BundleSource, entry: BundleEntry, key: bytes | None = None) -> None:
        """Append one tensor from `reader`, bytes and checksum exactly as stored there."""
        key = entry.key if key is None else key
        shard = self._place(key)
        proto = protos.BundleEntryProto.FromString(entry.proto)
        if not entry.num_slices:  # a partitioned variable's full entry has no bytes of its own
            reader.copy_bytes(entry, self._fds[shard])
            proto.shard_id = shard
            proto.offset = self._offsets[shard]
            self._offsets[shard] += entry.size
        self.last_size = 0 if entry.num_slices else entry.size
        self._entries[key] = proto.SerializeToString()

    def add(self, key: bytes, dtype_code: int, shape: tuple[int, ...], raw: bytes, masked_crc: int) -> None:
        """Append a tensor given as its stored bytes (little-endian, or TF's string layout) and masked CRC."""
        shard = self._place(key)
        proto = protos.BundleEntryProto(
            dtype=dtype_code, shard_id=shard, offset=self._offsets[shard], size=len(raw), crc32c=masked_crc
        )
        proto.shape.SetInParent()  # TF always writes the shape, `12 00` for a scalar
        for size in shape:
            proto.shape.dim.add(size=size)
        write_all(self._fds[shard], raw)
        self._offsets[shard] += len(raw)
        self.last_size = len(raw)
        self._entries[key] = proto.SerializeToString()

    def commit(self) -> None:
        """Make the data files durable, write the index, and rename data then index into place."""
        for fd in self._fds:
            os.fsync(fd)
            os.close(fd)
        self._fds = []
        index_fd = create_exclusive(self._index_temp)
        self._created.append(self._index_temp)
        with os.fdopen(index_fd, "wb") as out:
            table = TableBuilder(out)
            table.add(b"", _header(self.num_shards))
            for key in sorted(self._entries):
                table.add(key, self._entries[key])
            table.finish()
            out.flush()
            os.fsync(out.fileno())
        # All renames or none, as far as SIGTERM, SIGHUP and Ctrl-C go (SIGKILL can still land between
        # them). An older index at this prefix goes first: new data beside an old index would look complete.
        with signals_deferred():
            Path(self.index_path).unlink(missing_ok=True)
            for temp, path in zip(self._temps, self.data_paths, strict=True):
                os.replace(temp, path)
            os.replace(self._index_temp, self.index_path)
        fsync_directory(Path(self.prefix).parent)

    def abort(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        for temp in self._created:
            Path(temp).unlink(missing_ok=True)
