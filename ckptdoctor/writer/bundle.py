"""Streaming writer of TF V2 bundles that copies tensor bytes without decoding them."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from queue import SimpleQueue
from typing import Protocol, runtime_checkable

from ckptdoctor import TYPE_CHECKING, dtypes
from ckptdoctor.formats.base import VerifiedBytes, file_state
from ckptdoctor.formats.bytesource import LocalFile, write_all
from ckptdoctor.formats.sstable import TableBuilder
from ckptdoctor.formats.tf_bundle import (
    BundleEntry,
    aligned_chunk,
    checksum_and_count,
    data_file_name,
    encode_entry,
    encode_header,
)
from ckptdoctor.writer.atomic import Displaced, create_exclusive, fsync_directory, temp_beside
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


# Bytes the verifier reads at a time: each chunk is read, checksummed and counted while it is in the CPU's
# cache (an 8 MiB chunk goes through memory three times, which on a small machine costs as much as the copy).
VERIFY_CHUNK = 1 << 20


class _Abandoned(Exception):
    """The write was aborted while a range was being checked."""


class _Verifier:
    """Checks each copied tensor in the output file right after the kernel copied it, on a second thread:
    the CRC-32C and NaN/Inf count the re-check needs, computed while the next tensor copies (copy_file_range
    and pread release the GIL). The re-check then takes these instead of reading the same bytes back
    (`VerifiedBytes`). The count reads exponent bytes, not numpy: its import alone (~70 ms on 2 cores) took
    longer than the copy it ran beside (`dtypes.may_hold_nonfinite`).

    Only an optimisation: a range it could not check is left out, and the re-check reads it from disk."""

    def __init__(self, paths: list[str]) -> None:
        self._outputs = [LocalFile(path) for path in paths]  # the output's data files, opened to read back
        self._identities = [(status.st_dev, status.st_ino) for status in (out.status() for out in self._outputs)]
        self._work: SimpleQueue[tuple[int, int, int, dtypes.DType] | None] = SimpleQueue()
        self._verified = VerifiedBytes()
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="ckptdoctor-verify", daemon=True)
        try:
            self._thread.start()
        except BaseException:
            self._stop()
            raise

    def submit(self, shard: int, offset: int, size: int, dtype: dtypes.DType) -> None:
        self._work.put((shard, offset, size, dtype))

    def _run(self) -> None:
        while (job := self._work.get()) is not None:
            if self._abandoned:
                continue
            shard, offset, size, dtype = job
            try:
                result = checksum_and_count(
                    self._chunks(shard, offset, size, aligned_chunk(dtype, VERIFY_CHUNK)), dtype
                )
            except Exception:  # e.g. an I/O error: the re-check reads this range itself, and says what is wrong
                continue
            device, inode = self._identities[shard]
            self._verified.ranges[(device, inode, offset, size, dtype.code)] = result

    def _chunks(self, shard: int, offset: int, size: int, chunk: int) -> Iterator[bytes]:
        for start in range(offset, offset + size, chunk):
            if self._abandoned:  # an abort waits for one chunk, not for the rest of a many-gigabyte tensor
                raise _Abandoned
            length = min(chunk, offset + size - start)
            data = self._outputs[shard].read(start, length)
            if len(data) != length:
                raise OSError(f"{size} bytes copied at {offset}, fewer read back")
            yield data

    def finish(self) -> VerifiedBytes:
        """Every range submitted, checked (those that could be)."""
        self._stop()
        return self._verified

    def abandon(self) -> None:
        """Stop at once: the write failed, nothing it checked will be used."""
        self._abandoned = True
        self._stop()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._work.put(None)
            self._thread.join()
        for output in self._outputs:
            # The state the results hold for: a later write in place or a new file on a reused inode differs.
            status = output.status()
            self._verified.files[(status.st_dev, status.st_ino)] = file_state(status)
            output.close()
        self._outputs = []


class _Writeback:
    """Has the disk take each run while the next one copies: a second thread flushes the data files
    (fdatasync) as runs land in them, so the fsync before the renames finds little left to write. Copying
    first and syncing after, as `cp` + `sync` does, leaves the disk idle during the copy and the CPU idle during
    the sync: measured on 2 cores, the fsync of a 109 MB copy took ~32 ms after the copy, ~6 ms this way.

    A flush that fails is kept and raised by `stop`: Linux reports a writeback error once per open file, so
    the fsync before the renames would not see it again, and a checkpoint whose bytes never reached the disk
    would be renamed into place."""

    def __init__(self) -> None:
        self._due: SimpleQueue[int | None] = SimpleQueue()
        self._error: OSError | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ckptdoctor-writeback", daemon=True)
        self._thread.start()

    def flush(self, fd: int) -> None:
        """Start writing what `fd` holds so far; returns at once."""
        self._due.put(fd)

    def _run(self) -> None:
        while (fd := self._due.get()) is not None:
            due = {fd}
            while not self._due.empty():  # runs that landed while the disk was busy are flushed together
                if (more := self._due.get()) is None:
                    return
                due.add(more)
            for each in due:
                if self._stopping or self._error is not None:  # an abort may be closing the files
                    break
                try:
                    _flush_data(each)
                except OSError as error:
                    self._error = error

    def stop(self) -> None:
        """Wait for the flush under way (call before the files close); raise the error of one that failed."""
        self._stopping = True
        self._due.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


_flush_data = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


MAX_RUN_BYTES = 16 << 20  # one copy call at most: the verifier checks a run while the next one copies


class _Run:
    """Tensors stored back to back in one source shard, placed back to back in one output shard."""

    def __init__(self, reader: BundleSource, entry: BundleEntry, shard: int, offset: int) -> None:
        self.reader, self.shard = reader, shard
        self.entries, self.offsets = [entry], [offset]
        self.size = entry.size

    def extend(self, reader: BundleSource, entry: BundleEntry, shard: int, offset: int) -> bool:
        """Take `entry` into the run where it continues it in both files; False where it does not."""
        last = self.entries[-1]
        if (
            reader is not self.reader
            or entry.shard_id != last.shard_id
            or entry.offset != last.offset + last.size
            or shard != self.shard
            or offset != self.offsets[-1] + last.size
            or self.size + entry.size > MAX_RUN_BYTES
        ):
            return False
        self.entries.append(entry)
        self.offsets.append(offset)
        self.size += entry.size
        return True


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
        self._offsets = [0] * num_shards
        self._entries: dict[bytes, bytes] = {}
        self._run: _Run | None = None  # tensors placed but not yet copied
        self._verifier: _Verifier | None = None  # started with the first copy
        self._writeback: _Writeback | None = None  # likewise
        self.verified = VerifiedBytes()  # after `commit`: what the verifier checked of the copies
        self.last_size = 0  # bytes the last copy or add wrote, for progress reporting
        try:  # last: `abort` needs everything above
            for temp in self._temps:
                self._fds.append(create_exclusive(temp))
                self._created.append(temp)
        except BaseException:
            self.abort()
            raise

    @property
    def data_path(self) -> str:
        return self.data_paths[0]

    def _place(self, key: bytes) -> int:
        if key in self._entries:
            raise ValueError(f"duplicate key {key!r}")
        return min(range(self.num_shards), key=self._offsets.__getitem__)

    def copy(self, reader: BundleSource, entry: BundleEntry, key: bytes | None = None) -> None:
        """Append one tensor from `reader`, bytes and checksum exactly as stored there.

        Tensors that lie back to back in the same source file are copied by one call (see `_Run`): the
        kernel copies a run at full speed, and the verifier checks its tensors while the next run copies."""
        key = entry.key if key is None else key
        shard = self._place(key)
        if entry.num_slices:  # a partitioned variable's full entry has no bytes of its own
            self._entries[key] = entry.proto
            self.last_size = 0
            return
        offset = self._offsets[shard]
        if self._verifier is None and entry.dtype.itemsize:  # started before the first copy: see `_Verifier._run`
            self._verifier = _Verifier(self._temps)
        if self._run is None or not self._run.extend(reader, entry, shard, offset):
            self._flush()
            self._run = _Run(reader, entry, shard, offset)
        self._offsets[shard] += entry.size
        self.last_size = entry.size
        self._entries[key] = _placed(entry, shard, offset)

    def _flush(self) -> None:
        """Copy the pending run, and hand its numeric tensors to the verifier."""
        run, self._run = self._run, None
        if run is None:
            return
        first = run.entries[0]
        run.reader.copy_bytes(first._replace(size=run.size), self._fds[run.shard])
        if self._writeback is None:
            self._writeback = _Writeback()
        self._writeback.flush(self._fds[run.shard])
        for entry, offset in zip(run.entries, run.offsets, strict=True):
            if entry.dtype.itemsize and self._verifier is not None:  # numeric (a string tensor's CRC covers
                # its lengths: the re-check reads it)
                self._verifier.submit(run.shard, offset, entry.size, entry.dtype)

    def add(self, key: bytes, dtype_code: int, shape: tuple[int, ...], raw: bytes, masked_crc: int) -> None:
        """Append a tensor given as its stored bytes (little-endian, or TF's string layout) and masked CRC."""
        shard = self._place(key)
        self._flush()  # the run before this tensor goes first: both append to the shard
        self._entries[key] = encode_entry(dtype_code, shape, shard, self._offsets[shard], len(raw), masked_crc)
        write_all(self._fds[shard], raw)
        self._offsets[shard] += len(raw)
        self.last_size = len(raw)

    def commit(self) -> None:
        """Make the data files durable, write the index, and rename data then index into place."""
        self._flush()
        self._stop_writeback()
        for fd in self._fds:  # the verifier reads on while the disk takes the rest of the data
            os.fsync(fd)
            os.close(fd)
        self._fds = []
        index_fd = create_exclusive(self._index_temp)
        self._created.append(self._index_temp)
        with os.fdopen(index_fd, "wb") as out:
            table = TableBuilder(out)
            table.add(b"", encode_header(self.num_shards))
            for key in sorted(self._entries):
                table.add(key, self._entries[key])
            table.finish()
            out.flush()
            os.fsync(out.fileno())
        # All renames or none, as far as SIGTERM, SIGHUP and Ctrl-C go (SIGKILL can still land between
        # them). An older index at this prefix goes first: new data beside an old index would look complete.
        with Displaced(self.data_paths), signals_deferred():
            Path(self.index_path).unlink(missing_ok=True)
            for temp, path in zip(self._temps, self.data_paths, strict=True):
                os.replace(temp, path)
            os.replace(self._index_temp, self.index_path)
        fsync_directory(Path(self.prefix).parent)
        if self._verifier is not None:  # after the renames, which change the files' ctime
            self.verified, self._verifier = self._verifier.finish(), None

    def _stop_writeback(self) -> None:
        writeback, self._writeback = self._writeback, None
        if writeback is not None:
            writeback.stop()

    def abort(self) -> None:
        # The temporaries' names go first: a second Ctrl-C while the threads stop must not leave them. Their
        # files close only once the writeback thread has stopped flushing them (a closed descriptor's number may
        # be reused by the next file opened), and in any case, however the wait ends.
        try:
            for temp in self._created:
                Path(temp).unlink(missing_ok=True)
        finally:
            try:
                with suppress(OSError):  # a flush that failed: the write is being abandoned anyway
                    self._stop_writeback()
            finally:
                fds, self._fds = self._fds, []
                for fd in fds:
                    os.close(fd)
                if self._verifier is not None:
                    self._verifier.abandon()
                    self._verifier = None


def _placed(entry: BundleEntry, shard: int, offset: int) -> bytes:
    """The entry as stored, moved to `shard` at `offset`: re-encoded where it is in the plain layout TF writes
    (no protobuf import), else through protobuf so that any other field it holds is kept."""
    fields = (entry.dtype.code, entry.shape)
    if encode_entry(*fields, entry.shard_id, entry.offset, entry.size, entry.crc32c) == entry.proto:
        return encode_entry(*fields, shard, offset, entry.size, entry.crc32c)
    from ckptdoctor.formats import protos

    proto = protos.BundleEntryProto.FromString(entry.proto)
    proto.shard_id = shard
    proto.offset = offset
    return proto.SerializeToString()
