"""Random-access byte sources: readers fetch byte ranges, never whole files."""

from __future__ import annotations

import io
import os
import re
import stat

from ckptdoctor.model import CheckpointError
from ckptdoctor.typed import Protocol


class MissingFile(CheckpointError):
    """The path names nothing; unlike a file that exists but cannot be opened, this is a finding for shards."""


class ByteSource(Protocol):
    """A file-like object read by offset; a remote store can implement the same three methods."""

    name: str

    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether a path is a URL (`s3://`, `gs://`, `https://`, any protocol fsspec knows) rather than a file."""
    return isinstance(path, str) and _URL.match(path) is not None


def without_secrets(path: str) -> str:
    """A path as reports and messages may show it: a URL loses its userinfo, query and fragment (tokens)."""
    if not is_url(path):
        return path
    from ckptdoctor.formats.remote import shown_url

    return shown_url(path)


def local_path(path: str) -> str:
    """A `file://` URL as the plain path it names (read as any local file is); anything else unchanged."""
    if path[:7].lower() == "file://":
        from urllib.parse import unquote, urlsplit

        return unquote(urlsplit(path).path)
    return path


def open_source(path: str) -> ByteSource:
    """The byte source for a path or URL. Readers open files only through here: a URL is read by byte range
    through fsspec (formats/remote.py, imported only then), anything else with pread."""
    path = local_path(path)
    if is_url(path):
        from ckptdoctor.formats.remote import RemoteFile

        return RemoteFile(path)
    return LocalFile(path)


class SourceFile(io.RawIOBase):
    """A read-only, seekable file object over `size` bytes of a byte source from `start`: for libraries that
    want a file (h5py, zipfile), reading remote files by range and a stored zip member in place."""

    def __init__(self, source: ByteSource, start: int = 0, size: int | None = None, owns: bool = True) -> None:
        self.name = source.name
        self._source, self._start, self._owns = source, start, owns
        self._size = source.size() - start if size is None else size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer) -> int:
        length = max(0, min(len(buffer), self._size - self._position))
        data = self._source.read(self._start + self._position, length)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        if self._owns and not self.closed:
            self._source.close()
        super().close()


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
    """Refuse a path that is not a regular file before a library (h5py, zipfile) opens it by name (a URL is
    opened as a file object over its byte source, never by name)."""
    if not is_url(path):
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

    def status(self) -> os.stat_result:
        """fstat of the open file: which file it is (st_dev, st_ino) and its state now (size, mtime, ctime)."""
        return os.fstat(self._fd)

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
