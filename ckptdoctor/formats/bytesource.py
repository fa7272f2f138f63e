"""Random-access byte sources: readers fetch byte ranges, never whole files."""

from __future__ import annotations

import os
from typing import Protocol

from ckptdoctor.model import CheckpointError


class ByteSource(Protocol):
    """A file-like object read by offset; a remote store can implement the same three methods."""

    name: str

    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class LocalFile:
    """A local file read with pread, so concurrent readers never share a file position."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.name = str(path)
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: file not found") from None
        except IsADirectoryError:
            raise CheckpointError(f"{path}: is a directory, not a file") from None
        except OSError as error:
            raise CheckpointError(f"{path}: cannot open ({error.strerror})") from None
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

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
