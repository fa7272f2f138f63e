"""Temporary files beside their destination, renamed into place only when complete."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_MARKER = ".tmp-ckptdoctor-"


def temp_beside(final: str | os.PathLike[str]) -> str:
    """A fresh temporary name in the destination's directory, so the rename never crosses filesystems."""
    return f"{os.fspath(final)}{TEMP_MARKER}{secrets.token_hex(6)}"


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make renames in `directory` durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output(final: str | os.PathLike[str]) -> Iterator[str]:
    """A temporary path beside `final` to write; made durable and renamed onto `final` only on success."""
    temp = temp_beside(final)
    try:
        yield temp
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temp, final)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_directory(Path(final).parent)


def write_atomically(final: str | os.PathLike[str], data: bytes) -> None:
    with atomic_output(final) as temp, open(temp, "wb") as out:
        out.write(data)
