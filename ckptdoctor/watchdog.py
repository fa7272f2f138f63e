"""Stall supervision for the command line.

Damaged HDF5 metadata can make libhdf5 loop forever inside C code that holds the GIL, out of reach of any
Python signal handler or thread. So before the CLI first hands a file to native code that may loop, it
forks: the child goes on with the command and sends heartbeats through a pipe as it makes progress; the
parent only waits, and when no heartbeat comes for a while it kills the child and prints one line instead
of hanging. Commands that never reach such code (TF bundles are read in Python) never fork. Library use is
never supervised; where fork is missing (Windows) nothing is."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

DEFAULT_STALL_SECONDS = 300.0
EXIT_ERROR = 2

_enabled = False
_seconds = DEFAULT_STALL_SECONDS
_pipe: int | None = None
_last = 0.0
_subject = "the input"


def enable() -> None:
    """Called by the CLI only: supervise from the first native read on."""
    global _enabled, _seconds
    try:
        _seconds = float(os.environ.get("CKPTDOCTOR_STALL_SECONDS", DEFAULT_STALL_SECONDS))
    except ValueError:
        _seconds = DEFAULT_STALL_SECONDS
    _enabled = _seconds > 0 and hasattr(os, "fork")


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
    _subject = what
    _send(b"@" + what.encode("utf-8", "replace").replace(b"\n", b" ") + b"\n")


def guard_native_code() -> None:
    """Fork once, before native code that might loop; the parent supervises and never returns."""
    global _pipe, _enabled
    if not _enabled or _pipe is not None:
        return
    _enabled = False
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _pipe = write_end
        return
    os.close(write_end)
    os._exit(_supervise(pid, read_end))


def _supervise(pid: int, read_end: int) -> int:
    def forward(signum: int, _frame: object) -> None:  # a kill aimed at us reaches the work too
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    current, buffer = _subject, b""
    while True:
        ready, _, _ = select.select([read_end], [], [], _seconds)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            sys.stderr.write(
                f"ckptdoctor: error: {current}: no progress for {_seconds:g} s, giving up (damaged HDF5 "
                "metadata can make the HDF5 library loop; CKPTDOCTOR_STALL_SECONDS waits longer)\n"
            )
            sys.stderr.flush()
            return EXIT_ERROR
        data = os.read(read_end, 65536)
        if not data:
            break
        buffer = (buffer + data)[-4096:]
        start = buffer.rfind(b"@")
        if start >= 0 and b"\n" in buffer[start:]:
            current = buffer[start + 1 : buffer.index(b"\n", start)].decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else EXIT_ERROR
