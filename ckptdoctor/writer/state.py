"""The `checkpoint` state file that names a directory's latest checkpoint."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from ckptdoctor.formats.resolve import STATE_FILE, read_state_file
from ckptdoctor.formats.state_file import MAX_STATE_FILE_SIZE, CheckpointState, render_state
from ckptdoctor.model import CheckpointError
from ckptdoctor.writer.atomic import clear_debris, write_atomically
from ckptdoctor.writer.guard import OutputError, output_lock


def state_path(prefix: str) -> Path:
    return Path(prefix).parent / STATE_FILE


def read_state(directory: Path) -> CheckpointState | None:
    """The directory's state file, or None where there is none.

    Raises OutputError for one that is not a regular text file that parses (a directory, a FIFO, binary
    bytes): a writer calls this before it writes anything, so that such a file stops it early."""
    path = directory / STATE_FILE
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise OutputError(f"{path}: the checkpoint state file cannot be read ({error.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise OutputError(f"{path}: the checkpoint state file is not a regular file; move it away first")
    if info.st_size > MAX_STATE_FILE_SIZE:
        raise OutputError(f"{path}: {info.st_size} bytes is too large for a checkpoint state file")
    try:
        return read_state_file(directory)
    except OSError as error:
        raise OutputError(f"{path}: the checkpoint state file cannot be read ({error.strerror})") from None
    except CheckpointError as error:
        raise OutputError(f"{error}; move it away first") from None


def check_state_update(prefix: str) -> None:
    """Raise OutputError where the state file beside `prefix` could not name it: a writer calls this before it
    writes anything. The file must be readable (`read_state`), and the name UTF-8: the file is UTF-8 text, so
    a name made of other bytes (a Linux file name, decoded with surrogateescape) cannot be written in it."""
    name = Path(prefix).name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise OutputError(
            f"{prefix}: the checkpoint state file can name only UTF-8 file names, and this one is not; "
            "choose a UTF-8 name for the output"
        ) from None
    read_state(Path(prefix).parent)


def state_lock(prefix: str) -> AbstractContextManager[None]:
    """The lock on the state file beside `prefix`: a writer takes it before writing anything, so that a lock
    it cannot take stops the write before, not after, the checkpoint is in place."""
    return output_lock(str(state_path(prefix)), wait=True)  # another run may be updating it for another prefix


def update_state_file(prefix: str, inputs: Iterable[str] = (), *, locked: bool = False) -> str:
    """Name `prefix` as the latest checkpoint of its directory, as TF's Saver does; returns what changed.

    The checkpoints already listed stay listed, each with its timestamp; the new one gets the time now.
    `inputs` are files the debris clean-up must spare; `locked` says the caller holds `state_lock(prefix)`."""
    directory, name = Path(prefix).parent, Path(prefix).name
    path = directory / STATE_FILE
    with nullcontext() if locked else state_lock(prefix):
        clear_debris(path, inputs)
        existing = read_state(directory)
        state = existing if existing is not None else CheckpointState()
        paths, stamps = state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps
        paired = len(stamps) == len(paths)
        kept = [i for i, p in enumerate(paths) if Path(p).name != name]
        before = state.model_checkpoint_path
        state = state._replace(
            model_checkpoint_path=name,
            all_model_checkpoint_paths=(*(paths[i] for i in kept), name),
            all_model_checkpoint_timestamps=(*(stamps[i] for i in kept), time.time()) if paired else (),
        )
        write_atomically(path, render_state(state).encode())
    if existing is None:
        return f"{path}: created, latest is {name}"
    change = (
        f"latest was {Path(before).name}, now {name}" if before and Path(before).name != name else f"latest is {name}"
    )
    others = f"; {len(kept)} other checkpoints still listed" if kept else ""
    dropped = "; its timestamps did not pair with the paths and were dropped" if not paired else ""
    return f"{path}: {change}{others}{dropped}"
