"""Random-access byte sources: readers fetch byte ranges, never whole files."""

from __future__ import annotations

import os
import stat
from typing import Protocol

from ckptdoctor.model import CheckpointError


class MissingFile(CheckpointError):
    """The path names nothing; unlike a file that exists but cannot be opened, this is a finding for shards."""


class ByteSource(Protocol):
    """A file-like object read by offset; a remote store can implement the same three methods."""

    name: str

    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


def open_source(path: str) -> ByteSource:
    """The byte source for a path. Readers open files only through here, so a remote store (an fsspec
    filesystem for gs:// or s3:// URLs) can be added in this one place without touching any reader."""
    return LocalFile(path)


def copy_range(source: ByteSource, offset: int, length: int, out_fd: int, chunk: int = 8 << 20) -> None:
    """Append `length` bytes of `source` at `offset` to the file descriptor `out_fd`, streaming."""
    if isinstance(source, LocalFile) and hasattr(os, "copy_file_range"):
        source.copy_to(offset, length, out_fd)
        return
    for start in range(offset, offset + length, chunk):
        write_all(out_fd, source.read(start, min(chunk, offset + length - start)))


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def open_regular(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor for a regular file; anything else (FIFO, device, socket, directory) is refused.

    Opened non-blocking, since opening a FIFO for reading otherwise waits for a writer forever; the flag is
    cleared again once the descriptor is known to be a regular file."""
    nonblocking = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, os.O_RDONLY | nonblocking | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise MissingFile(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a file") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot open ({error.strerror})") from None
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        raise CheckpointError(f"{path}: is {_file_kind(kind)}, not a regular file")
    if nonblocking:
        os.set_blocking(fd, True)
    return fd


def require_regular(path: str | os.PathLike[str]) -> None:
    """Refuse a path that is not a regular file before a library (h5py, zipfile) opens it by name."""
    os.close(open_regular(path))


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


class LocalFile:
    """A local file read with pread, so concurrent readers never share a file position."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.name = str(path)
        self._fd = open_regular(path)
        self._size = os.fstat(self._fd).st_size

    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset`, or fewer where the file ends first."""
        chunks = []
        while length > 0:
            chunk = os.pread(self._fd, length, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def copy_to(self, offset: int, length: int, out_fd: int) -> None:
        """Copy inside the kernel (reflinks where the filesystem has them); falls back to read and write."""
        end = offset + length
        try:
            while offset < end:
                copied = os.copy_file_range(self._fd, out_fd, end - offset, offset)
                if copied == 0:
                    raise CheckpointError(f"{self.name}: ended {end - offset} bytes early while copying")
                offset += copied
        except OSError:  # e.g. EXDEV on older kernels, or filesystems without support
            while offset < end:
                data = self.read(offset, min(8 << 20, end - offset))
                if not data:
                    raise CheckpointError(f"{self.name}: ended {end - offset} bytes early while copying") from None
                write_all(out_fd, data)
                offset += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
