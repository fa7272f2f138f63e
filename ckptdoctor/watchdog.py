"""Stall supervision, for the command line only (the library never imports this module).

Damaged HDF5 metadata can make libhdf5 loop forever inside C code that holds the GIL, out of reach of any
Python signal handler or thread. So when a command's inputs include a file read by such native code, the
CLI calls `supervise` before running the command: the process forks, the child goes on with the command and
sends heartbeats through a pipe as it makes progress (the CLI's progress callbacks call `beat`); the parent
only waits, and when no heartbeat comes for a while it kills the child and prints one line instead of
hanging. Commands on TF bundles (read in Python) never fork. Where fork is missing (Windows) nothing is
supervised."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable

from ckptdoctor.model import Storage

DEFAULT_STALL_SECONDS = 300.0
NATIVE_STORAGE = frozenset({Storage.HDF5, Storage.ZIP})  # inputs read by libhdf5 (a .keras archive holds an HDF5 file)

_pipe: int | None = None
_last = 0.0
_subject = "the input"


def _stall_seconds() -> float:
    try:
        return float(os.environ.get("CKPTDOCTOR_STALL_SECONDS", DEFAULT_STALL_SECONDS))
    except ValueError:
        return DEFAULT_STALL_SECONDS


def reads_native_code(paths: Iterable[str | None]) -> bool:
    """Whether any of these inputs will be handed to native code that can loop (resolving is cheap)."""
    from ckptdoctor.errors import CkptDoctorError
    from ckptdoctor.formats.resolve import resolve

    for path in paths:
        if path is None:
            continue
        try:
            if resolve(path).storage in NATIVE_STORAGE:
                return True
        except (CkptDoctorError, OSError):
            continue  # the command itself reports it
    return False


def supervise(paths: Iterable[str | None], exit_error: int) -> None:
    """Fork if any input needs it; the child returns and runs the command, the parent waits and exits."""
    seconds = _stall_seconds()
    if _pipe is not None or seconds <= 0 or not hasattr(os, "fork") or not reads_native_code(paths):
        return
    _fork(seconds, exit_error)


def _send(message: bytes) -> None:
    if _pipe is not None:
        with contextlib.suppress(OSError):
            os.write(_pipe, message)


def beat(*_: object) -> None:
    """Progress was made (usable directly as a progress callback); sent at most four times a second."""
    global _last
    now = time.monotonic()
    if now - _last >= 0.25:
        _last = now
        _send(b".")


def subject(what: str) -> None:
    """Name what is being read now, for the message if it stalls; counts as progress."""
    global _subject
    if what == _subject:
        return
    _subject = what
    _send(b"@" + what.encode("utf-8", "replace").replace(b"\n", b" ") + b"\n")


def _fork(seconds: float, exit_error: int) -> None:
    global _pipe
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _pipe = write_end
        return
    os.close(write_end)
    os._exit(_supervise(pid, read_end, seconds, exit_error))


def _supervise(pid: int, read_end: int, seconds: float, exit_error: int) -> int:
    import select  # only the waiting parent needs these: every command imports this module
    import signal

    def forward(signum: int, _frame: object) -> None:  # a kill aimed at us reaches the work too
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    current, buffer = _subject, b""
    while True:
        ready, _, _ = select.select([read_end], [], [], seconds)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            from ckptdoctor.names import shown  # the file name is untrusted: never an escape on the terminal

            sys.stderr.write(
                f"ckptdoctor: error: {shown(current)}: no progress for {seconds:g} s, giving up (damaged HDF5 "
                "metadata can make the HDF5 library loop; CKPTDOCTOR_STALL_SECONDS waits longer)\n"
            )
            sys.stderr.flush()
            return exit_error
        data = os.read(read_end, 65536)
        if not data:
            break
        buffer = (buffer + data)[-4096:]
        start = buffer.rfind(b"@")
        if start >= 0 and b"\n" in buffer[start:]:
            current = buffer[start + 1 : buffer.index(b"\n", start)].decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # the work died by a signal: die by the same one, so our caller sees what happened
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return exit_error  # a signal that does not end a process
    return code
