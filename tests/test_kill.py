"""A patch killed at any moment leaves its inputs byte-identical and at the output either nothing or a
complete checkpoint: never a half-written one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import file_bytes
from synthetic import write_synthetic

from ckptdoctor import check
from ckptdoctor.model import CheckpointError

# Kill moments as fractions of how long a full patch of the same inputs took on this machine, so that the
# kills land before, during and after the copy whatever the machine's speed.
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9, 1.2)


def patch_command(target, donor, out) -> list[str]:
    return [sys.executable, "-m", "ckptdoctor", "patch", str(target), "--from", str(donor), "--out", str(out)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 300 MB target without statistics, a donor with them, and the files a finished patch writes."""
    directory = tmp_path_factory.mktemp("kill")
    target, donor = directory / "target" / "model.ckpt", directory / "donor" / "model.ckpt"
    target.parent.mkdir()
    donor.parent.mkdir()
    write_synthetic(target, 300_000_000, 800, shards=2, drop_statistics=True)
    write_synthetic(donor, 300_000, 800, statistics_only=True)
    start = time.monotonic()
    subprocess.run(patch_command(target, donor, directory / "done" / "model.ckpt"), check=True, capture_output=True)
    seconds = time.monotonic() - start
    finished = {p.name: p.stat().st_size for p in (directory / "done").iterdir() if p.name != "checkpoint"}
    finished["variables"] = len(check(directory / "done" / "model.ckpt").variables)
    return target, donor, finished, seconds


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_killed_patch(inputs, tmp_path, fraction):
    target, donor, finished, seconds = inputs
    before = {**file_bytes(target), **file_bytes(donor)}
    out = tmp_path / "out" / "model.ckpt"
    process = subprocess.Popen(
        patch_command(target, donor, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the whole group is killed, as a CI runner or Ctrl-C would
    )
    time.sleep(seconds * fraction)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert {**file_bytes(target), **file_bytes(donor)} == before
    if (out.parent / "model.ckpt.index").exists():
        report = check(out)  # complete: every tensor readable, every checksum right, nothing missing
        assert report.findings == ()
        assert len(report.variables) == finished["variables"]
    else:
        with pytest.raises(CheckpointError):
            check(out)
    # Partial bytes only ever live in temporary files: a file under a final name is complete.
    present = {p.name: p.stat().st_size for p in out.parent.glob("model.ckpt.*")} if out.parent.exists() else {}
    for name, size in present.items():
        if ".tmp-ckptdoctor-" not in name:
            assert size == finished[name], name


def test_debris_of_a_killed_patch_is_cleared_by_the_next(inputs, tmp_path):
    target, donor, _, _ = inputs
    out = tmp_path / "model.ckpt"
    debris = tmp_path / "model.ckpt.data-00000-of-00001.tmp-ckptdoctor-0123456789ab"
    debris.write_bytes(b"partial")
    subprocess.run(patch_command(target, donor, out), check=True, capture_output=True)
    assert not debris.exists()
    assert check(out).findings == ()
