"""How the bundle writer overlaps its I/O: the disk takes each run while the next copies (a writeback thread),
and a replaced output's blocks are freed after the renames (`Displaced`). Neither may outlive the write,
block on what lies at an output path, or change what is written."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from conftest import FIXTURE_BUNDLES

from ckptdoctor.formats.tf_bundle import BundleReader
from ckptdoctor.patch import patch
from ckptdoctor.writer.atomic import Displaced
from ckptdoctor.writer.bundle import BundleWriter

TRAINABLE = FIXTURE_BUNDLES["finetune_trainable"]
FULL = FIXTURE_BUNDLES["finetune_full"]
WRITER_THREADS = {"ckptdoctor-writeback", "ckptdoctor-verify"}

needs_o_path = pytest.mark.skipif(not hasattr(os, "O_PATH"), reason="O_PATH is Linux's: elsewhere nothing is held")


def _writer_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name in WRITER_THREADS]


def _copy_all(writer: BundleWriter, reader: BundleReader) -> None:
    for entry in reader.entries.values():
        writer.copy(reader, entry)


def test_no_writer_thread_outlives_a_commit_or_an_abort(tmp_path):
    reader = BundleReader(str(TRAINABLE))
    committed = BundleWriter(str(tmp_path / "committed"))
    _copy_all(committed, reader)
    committed.commit()
    assert _writer_threads() == []
    aborted = BundleWriter(str(tmp_path / "aborted"))
    _copy_all(aborted, reader)
    aborted.abort()
    reader.close()
    assert _writer_threads() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "committed.data-00000-of-00001",
        "committed.index",
    ]  # the aborted write left no temporaries


def test_a_patch_over_an_existing_output_is_the_same_as_a_fresh_one(tmp_path):
    fresh, again = tmp_path / "fresh" / "model.ckpt-1", tmp_path / "again" / "model.ckpt-1"
    patch(TRAINABLE, FULL, fresh)
    patch(FULL, FULL, again)  # something else there first: the patch replaces it
    patch(TRAINABLE, FULL, again, force=True)
    for suffix in (".index", ".data-00000-of-00001"):
        assert Path(f"{again}{suffix}").read_bytes() == Path(f"{fresh}{suffix}").read_bytes()


def _held(path_before: os.stat_result) -> list[int]:
    """Descriptors of this process that refer to the inode `path_before` described."""
    held = []
    for name in os.listdir("/proc/self/fd"):
        try:
            status = os.stat(int(name))
        except OSError:
            continue
        if (status.st_dev, status.st_ino) == (path_before.st_dev, path_before.st_ino):
            held.append(int(name))
    return held


@needs_o_path
def test_a_displaced_file_is_held_through_the_rename_and_let_go_on_release(tmp_path):
    target, replacement = tmp_path / "data", tmp_path / "data.new"
    target.write_bytes(b"old" * 1000)
    replacement.write_bytes(b"new")
    before = target.stat()
    with Displaced([str(target), str(tmp_path / "absent")]):
        os.replace(replacement, target)
        assert target.read_bytes() == b"new"
        assert _held(before)  # the old inode lives on, unlinked, until the `with` ends
    for thread in threading.enumerate():
        if thread.name == "ckptdoctor-release":
            thread.join(timeout=10)
    assert _held(before) == []


@needs_o_path
def test_displacing_a_fifo_or_a_link_neither_blocks_nor_follows(tmp_path):
    fifo, outside, link = tmp_path / "fifo", tmp_path / "outside", tmp_path / "link"
    os.mkfifo(fifo)  # opened to read or write, a FIFO would wait for a peer
    outside.write_bytes(b"not ours")
    link.symlink_to(outside)
    made: list[Displaced] = []
    worker = threading.Thread(target=lambda: made.append(Displaced([str(fifo), str(link)])), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert made, "Displaced blocked on a FIFO"
    assert _held(outside.stat()) == []  # the link's target was never opened
    made[0].__exit__(None, None, None)
    assert outside.read_bytes() == b"not ours"


@needs_o_path
def test_an_interrupt_while_displacing_leaves_nothing_held(tmp_path):
    """Ctrl-C between two of its opens: the constructor never returns, so it must let go of what it holds."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"a")
    second.write_bytes(b"b")

    def interrupted_after_the_first():
        yield str(first)
        raise KeyboardInterrupt
        yield str(second)  # never reached

    with pytest.raises(KeyboardInterrupt):
        Displaced(interrupted_after_the_first())
    assert _held(first.stat()) == []


def test_a_flush_that_failed_stops_the_write_before_anything_is_renamed(tmp_path, monkeypatch):
    """Linux reports a writeback error once per open file: the writeback thread's fdatasync takes it, and the
    fsync before the renames would then succeed on bytes that never reached the disk."""
    import errno

    from ckptdoctor.writer import bundle

    failed = threading.Event()

    def failing_flush(fd: int) -> None:
        failed.set()
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(bundle, "_flush_data", failing_flush)
    reader = BundleReader(str(TRAINABLE))
    writer = BundleWriter(str(tmp_path / "out"))
    _copy_all(writer, reader)
    writer._flush()  # the pending run: a small checkpoint is one run, copied at the commit otherwise
    assert failed.wait(timeout=10)  # the thread flushed (and failed) before the commit
    with pytest.raises(OSError, match="Input/output error"):
        writer.commit()
    writer.abort()
    reader.close()
    assert list(tmp_path.iterdir()) == []  # nothing renamed into place, no temporaries
    assert _writer_threads() == []


class _SecondInterrupt(BaseException):
    """A second Ctrl-C, raised where a KeyboardInterrupt would be (not one, so that pytest goes on)."""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors through Linux's /proc")
def test_a_second_interrupt_while_abort_waits_leaves_no_temporary_and_no_descriptor(tmp_path, monkeypatch):
    import signal
    import time

    from ckptdoctor.writer import bundle

    flushing = threading.Event()

    def slow_flush(fd: int) -> None:  # a slow disk: the abort waits on this flush
        flushing.set()
        time.sleep(1.0)

    def interrupt(signum, frame):
        raise _SecondInterrupt

    monkeypatch.setattr(bundle, "_flush_data", slow_flush)
    previous = signal.signal(signal.SIGUSR1, interrupt)
    reader = BundleReader(str(TRAINABLE))
    before = len(os.listdir("/proc/self/fd"))
    writer = BundleWriter(str(tmp_path / "out"))
    try:
        _copy_all(writer, reader)
        writer._flush()  # the pending run too: the writeback thread is now flushing
        assert flushing.wait(timeout=10)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        with pytest.raises(_SecondInterrupt):
            writer.abort()  # interrupted while it waits for the writeback thread
    finally:
        signal.signal(signal.SIGUSR1, previous)
    reader.close()
    assert list(tmp_path.iterdir()) == []
    assert len(os.listdir("/proc/self/fd")) == before
    for thread in threading.enumerate():
        if thread.name in WRITER_THREADS:
            thread.join(timeout=10)


def test_a_directory_where_the_data_file_goes_is_refused_before_the_old_index_goes(tmp_path):
    from conftest import run_cli

    out = tmp_path / "model.ckpt-1"
    patch(FULL, FULL, out)
    index = Path(f"{out}.index").read_bytes()
    data = Path(f"{out}.data-00000-of-00001")
    data.unlink()
    data.mkdir()  # a careless copy left a directory with the data file's name
    result = run_cli("patch", TRAINABLE, "--from", FULL, "--out", out, "--force")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "directory" in result.stderr and "unexpected" not in result.stderr
    assert Path(f"{out}.index").read_bytes() == index  # the older checkpoint's index is still there


def test_a_writer_that_cannot_create_its_files_raises_what_stopped_it(tmp_path):
    """Its abort then has nothing to undo, and says nothing of its own (it once raised AttributeError)."""
    with pytest.raises(FileNotFoundError):
        BundleWriter(str(tmp_path / "no such directory" / "model.ckpt"))
