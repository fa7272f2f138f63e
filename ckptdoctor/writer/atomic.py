"""Temporary files beside their destination, renamed into place only when complete."""

from __future__ import annotations

import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

TEMP_MARKER = ".tmp-ckptdoctor-"
# `<final><TEMP_MARKER><pid>-<12 hex>`: the pid says whether the writer that made the file is still alive.
_TEMP_TAIL = re.compile(re.escape(TEMP_MARKER) + r"(\d+)-[0-9a-f]{12}$")


def temp_beside(final: str | os.PathLike[str]) -> str:
    """A fresh temporary name in the destination's directory, so the rename never crosses filesystems.

    The name carries this process's pid so that a later run can tell a dead writer's debris from a live
    writer's files."""
    return os.fspath(final) + temp_suffix()


def temp_suffix() -> str:
    """`<TEMP_MARKER><pid>-<12 random hex>` (os.urandom: `secrets` costs 6 ms to import)."""
    return f"{TEMP_MARKER}{os.getpid()}-{os.urandom(6).hex()}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return True  # never ours to judge: our own files are removed by the code that made them
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by someone else
        return True
    return True


def clear_debris(final: str | os.PathLike[str], inputs: Iterable[str] = ()) -> list[Path]:
    """Remove temporary files beside `final` left by writers that are dead; returns what was removed.

    Call only while holding the output's lock (writer.guard.output_lock): then no live ckptdoctor writes
    this output, and the pid check spares a live writer of a neighbouring output with a similar name.
    A name proves nothing: a file among `inputs` (by real path or hard link) is never removed, whatever
    it is called."""
    from ckptdoctor.writer.guard import InputFiles

    protected = InputFiles(inputs)
    path = Path(final)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        if not candidate.name.startswith(path.name):
            continue
        tail = _TEMP_TAIL.search(candidate.name)
        if tail is None or _pid_alive(int(tail.group(1))) or protected.matching(candidate) is not None:
            continue
        try:
            if stat.S_ISREG(candidate.lstat().st_mode):  # a link or directory with our name is not our debris
                candidate.unlink()
                removed.append(candidate)
        except FileNotFoundError:
            pass
    return removed


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


class Displaced:
    """Files that renames are about to replace, held until the renames are done.

    The kernel frees a file's blocks when its last reference goes: a rename over a 109 MB data file spends
    ~18 ms freeing them on ext4, on the critical path. Held by a reference that cannot read or write them
    (O_PATH), the renames are instant, and leaving the `with` lets the blocks go on a thread while the caller
    goes on (the interpreter waits for that thread at exit). Where O_PATH does not exist, nothing is held."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._fds: list[int] = []
        flags = getattr(os, "O_PATH", None)
        if flags is None:
            return
        try:
            for path in paths:
                with suppress(OSError):  # nothing there (a first write) or nothing we may hold: the rename frees it
                    self._fds.append(os.open(path, flags | getattr(os, "O_NOFOLLOW", 0)))
        except BaseException:  # Ctrl-C between two opens: a library's host process goes on without the leak
            _close_all(self._fds)
            raise

    def __enter__(self) -> Displaced:
        return self

    def __exit__(self, *_: object) -> None:
        fds, self._fds = self._fds, []
        if fds:
            threading.Thread(target=_close_all, args=(fds,), name="ckptdoctor-release").start()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def create_exclusive(path: str) -> int:
    """Create a new file for writing; fails rather than follow a link or reuse a file someone planted."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)


@contextmanager
def atomic_output(final: str | os.PathLike[str]) -> Iterator[str]:
    """A temporary path beside `final` to write; made durable and renamed onto `final` only on success."""
    temp = temp_beside(final)
    try:
        yield temp
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        with Displaced([os.fspath(final)]):
            os.replace(temp, final)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_directory(Path(final).parent)


def write_atomically(final: str | os.PathLike[str], data: bytes) -> None:
    with atomic_output(final) as temp, os.fdopen(create_exclusive(temp), "wb") as out:
        out.write(data)


def _is_our_stream(path: str, fd: int) -> bool:
    """Whether `path` (e.g. /dev/stdout) is the very file open as `fd`."""
    try:
        here, there = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def write_report(path: str, text: str) -> None:
    """Write a report the way a user means the path.

    A regular file is replaced atomically. Anything else that exists — a link, a FIFO, a terminal,
    /dev/stdout — is written through, as a shell redirection would: replacing it with a regular file
    would break the pipe or the link. A path naming our own stdout or stderr writes to that stream, so
    that `-o /dev/stdout >> log` appends instead of truncating the log."""
    import sys

    data = text.encode("utf-8")
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        if _is_our_stream(path, fd):
            stream.flush()
            stream.buffer.write(data)
            stream.buffer.flush()
            return
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is None or stat.S_ISREG(mode):
        write_atomically(path, data)
        return
    with open(path, "wb") as out:
        out.write(data)
