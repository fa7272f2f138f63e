"""What every writer checks before it writes a byte, and the lock it holds while it writes.

One guard for every writer: the files an output will create, replace or delete are compared with every
file of every input by real path (through symlinked directories and files) and by identity (hard links),
and a clash refuses the write. One lock per output: two runs never write the same output at once."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

from ckptdoctor.errors import OutputError

__all__ = [
    "LOCK_SUFFIX",
    "OutputError",
    "files_read",
    "input_files",
    "output_lock",
    "refuse_overwriting_inputs",
]

LOCK_SUFFIX = ".ckptdoctor-lock"


def input_files(reader: object) -> list[str]:
    """Every file a checkpoint reader reads: a bundle's index and each data shard, or the one file."""
    from ckptdoctor.formats.tf_bundle import BundleReader

    if isinstance(reader, BundleReader):
        return [reader.location + ".index", *(reader.data_path(i) for i in range(reader.num_shards))]
    return [reader.location]  # type: ignore[attr-defined]


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


def refuse_overwriting_inputs(out: str, outputs: Iterable[str], inputs: Iterable[str]) -> None:
    """Raise OutputError when any file the output writes or deletes is one of the inputs' files."""
    by_real_path = {os.path.realpath(path): path for path in inputs}
    by_identity = {_identity(path): path for path in by_real_path.values()}
    by_identity.pop(None, None)
    for path in outputs:
        clash = by_real_path.get(os.path.realpath(path)) or by_identity.get(_identity(path))
        if clash is not None:
            shown = clash if os.path.abspath(path) == os.path.abspath(clash) else f"{path}, which is {clash}"
            raise OutputError(f"{out}: the output must not be one of the inputs (it would replace {shown})")


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
    path = out + LOCK_SUFFIX
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as error:
            raise OutputError(f"{path}: cannot create the lock file ({error.strerror})") from None
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
