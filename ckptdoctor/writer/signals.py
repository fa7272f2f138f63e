"""Termination signals during a write: clean up like Ctrl-C, then end the process as the sender asked."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# SIGINT already raises KeyboardInterrupt; these would otherwise kill the process with its temporaries.
TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
DEFERRED = (*TERMINATING, signal.SIGINT)


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM or SIGHUP arrives during a write.

    A BaseException, like KeyboardInterrupt, so that `except Exception` does not swallow it and every
    cleanup (`except BaseException`, `finally`) runs on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


@contextmanager
def cleanup_on_termination() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise Terminated, so the write's cleanup runs.

    On leaving, the previous handlers are restored and a caught signal is sent again, so the process
    still ends by that signal (exit status 128+N in a shell) once its temporaries are gone. Signals
    that are ignored (`nohup` ignores SIGHUP) stay ignored. Outside the main thread Python cannot set
    handlers, and nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    leaving = False

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) == 1 and not leaving:  # later signals must not interrupt the cleanup itself
            raise Terminated(signum)

    previous = {}
    for signum in TERMINATING:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        leaving = True
        for signum, old in previous.items():
            signal.signal(signum, old)
        if received:
            os.kill(os.getpid(), received[0])


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold termination signals back for a few system calls that must all happen or none (renames)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
