"""What every writer checks before it writes a byte, and the lock it holds while it writes.

One guard for every writer: the files an output will create, replace or delete are compared with every
file of every input by real path (through symlinked directories and files) and by identity (hard links),
and a clash refuses the write. One lock per output: two runs never write the same output at once."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.errors import OutputError

if TYPE_CHECKING:
    from ckptdoctor.formats.base import CheckpointReader

__all__ = [
    "LOCK_SUFFIX",
    "InputFiles",
    "OutputError",
    "files_read",
    "input_files",
    "lock_path",
    "output_lock",
    "refuse_overwriting_inputs",
]

LOCK_SUFFIX = ".ckptdoctor-lock"


def input_files(reader: CheckpointReader) -> list[str]:
    """Every file a checkpoint reader reads: a bundle's index and each data shard, or the one file."""
    return list(reader.files())


def files_read(paths: Iterable[str | None]) -> list[str]:
    """Every file reading these paths touches: each path itself (unless a directory), the files of the
    checkpoint it resolves to, and a directory's state file. A path that cannot be opened still protects
    what it names; the command reports why it cannot be read."""
    from ckptdoctor.errors import CkptDoctorError
    from ckptdoctor.formats import open_checkpoint
    from ckptdoctor.formats.resolve import STATE_FILE

    files: list[str] = []
    for path in paths:
        if path is None:
            continue
        if os.path.isdir(path):
            files.append(os.path.join(path, STATE_FILE))
        elif os.path.lexists(path):
            files.append(path)
        try:
            reader, _ = open_checkpoint(path)
        except (CkptDoctorError, OSError):
            continue
        try:
            files.extend(input_files(reader))
        finally:
            reader.close()
    return files


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class InputFiles:
    """The inputs' files, to tell whether a path is one of them: by real path (through symlinked directories
    and files) or by identity (hard links)."""

    def __init__(self, inputs: Iterable[str]) -> None:
        self._by_real_path = {os.path.realpath(path): path for path in inputs}
        self._by_identity = {_identity(path): path for path in self._by_real_path.values()}
        self._by_identity.pop(None, None)

    def matching(self, path: str | os.PathLike[str]) -> str | None:
        """The input file `path` is, or None."""
        return self._by_real_path.get(os.path.realpath(path)) or self._by_identity.get(_identity(os.fspath(path)))


def refuse_overwriting_inputs(out: str, outputs: Iterable[str], inputs: Iterable[str]) -> None:
    """Raise OutputError when any file the output writes or deletes is one of the inputs' files."""
    files = InputFiles(inputs)
    for path in outputs:
        clash = files.matching(path)
        if clash is not None:
            shown = clash if os.path.abspath(path) == os.path.abspath(clash) else f"{path}, which is {clash}"
            raise OutputError(f"{out}: the output must not be one of the inputs (it would replace {shown})")


def lock_path(out: str) -> str:
    """The lock file of an output: one of the files a write creates and deletes, so the guard checks it."""
    return out + LOCK_SUFFIX


def _refuse_foreign_lock(path: str, info: os.stat_result | None) -> None:
    """A lock file is one this tool made: a regular, empty file with one name. Anything else at that path
    (an input named like a lock, a directory, a FIFO) is never opened as the lock, nor deleted on release."""
    if info is not None and (not stat.S_ISREG(info.st_mode) or info.st_size != 0 or info.st_nlink != 1):
        raise OutputError(f"{path}: not an empty lock file left by ckptdoctor (an input?); move it away first")


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


@contextmanager
def output_lock(out: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `OUT.ckptdoctor-lock` for the whole write; fail at once if another run holds it.

    Failing fast (rather than waiting) keeps a second run from replacing, moments later, an output the
    user did not see yet; `wait` is for short updates of a shared file (the directory's state file).
    The lock file is removed on release: it is unlinked while still locked, and a run that locked a file
    no longer at that path tries again, so two runs never hold "the" lock at once.
    Without fcntl (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = lock_path(out)
    while True:
        _refuse_foreign_lock(path, _lstat(path))  # before opening: opening a device or FIFO can have effects
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as error:
            raise OutputError(f"{path}: cannot create the lock file ({error.strerror})") from None
        try:
            _refuse_foreign_lock(path, os.fstat(fd))  # as opened: it may have changed since
        except OutputError:
            os.close(fd)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputError(f"{out}: another ckptdoctor is writing this output; try again when it is done") from None
        if _identity(path) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
            break
        os.close(fd)  # the holder before us removed this file as we opened it: lock the new one
    try:
        yield
    finally:
        with suppress(OSError):
            os.unlink(path)
        os.close(fd)
