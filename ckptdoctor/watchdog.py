"""Stall supervision for the command line.

Damaged HDF5 metadata can make libhdf5 loop forever inside C code that holds the GIL, out of reach of any
Python signal handler or thread. So the CLI forks: the child does the work and sends heartbeats through a
pipe as it makes progress; the parent waits, and when no heartbeat comes for a while it kills the child and
prints one line instead of hanging. Where fork is missing (Windows) the work runs unsupervised."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Callable

DEFAULT_STALL_SECONDS = 300.0
EXIT_ERROR = 2

_pipe: int | None = None
_last = 0.0


def stall_seconds() -> float:
    try:
        return float(os.environ.get("CKPTDOCTOR_STALL_SECONDS", DEFAULT_STALL_SECONDS))
    except ValueError:
        return DEFAULT_STALL_SECONDS


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
    _send(b"@" + what.encode("utf-8", "replace").replace(b"\n", b" ") + b"\n")


def run_supervised(work: Callable[[], int], seconds: float | None = None) -> int:
    """Run `work` in a child process and return its exit code, or 2 after a stall of `seconds`."""
    global _pipe
    seconds = stall_seconds() if seconds is None else seconds
    if seconds <= 0 or not hasattr(os, "fork"):
        return work()
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _pipe = write_end
        code = EXIT_ERROR
        try:
            code = work()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)

    def forward(signum: int, _frame: object) -> None:  # a kill aimed at us reaches the work too
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    current, buffer = "the input", b""
    while True:
        try:
            ready, _, _ = select.select([read_end], [], [], seconds)
        except InterruptedError:  # pragma: no cover - select retries on EINTR since Python 3.5
            continue
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            sys.stderr.write(
                f"ckptdoctor: error: {current}: no progress for {seconds:g} s, giving up (damaged HDF5 "
                "metadata can make the HDF5 library loop; CKPTDOCTOR_STALL_SECONDS waits longer)\n"
            )
            return EXIT_ERROR
        data = os.read(read_end, 65536)
        if not data:
            break
        buffer = (buffer + data)[-4096:]
        if b"@" in buffer and b"\n" in buffer[buffer.rfind(b"@") :]:
            start = buffer.rfind(b"@")
            current = buffer[start + 1 : buffer.index(b"\n", start)].decode("utf-8", "replace")
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else EXIT_ERROR
