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
