"""A patch killed at any moment leaves its inputs byte-identical and at the output either nothing or a
complete checkpoint: never a half-written one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest
from conftest import KERAS, cli_command, file_bytes
from synthetic import write_synthetic

from ckptdoctor import check
from ckptdoctor.model import CheckpointError
from ckptdoctor.writer.atomic import TEMP_MARKER
from ckptdoctor.writer.guard import LOCK_SUFFIX

# Kill moments as fractions of how long a full patch of the same inputs took on this machine, so that the
# kills land before, during and after the copy whatever the machine's speed.
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9, 1.2)


def patch_command(target, donor, out) -> list[str]:
    return cli_command("patch", target, "--from", donor, "--out", out)


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
        # The empty lock file may stay (a killed holder's lock is released by the kernel; the next run takes it).
        if TEMP_MARKER not in name and not name.endswith(LOCK_SUFFIX):
            assert size == finished[name], name


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_debris_of_a_killed_patch_is_cleared_by_the_next(inputs, tmp_path):
    target, donor, _, _ = inputs
    out = tmp_path / "model.ckpt"
    debris = tmp_path / f"model.ckpt.data-00000-of-00001.tmp-ckptdoctor-{dead_pid()}-0123456789ab"
    debris.write_bytes(b"partial")
    subprocess.run(patch_command(target, donor, out), check=True, capture_output=True)
    assert not debris.exists()
    assert check(out).findings == ()


def leftovers(directory) -> list[str]:
    """Temporaries, lock files and scratch directories a writer may have left."""
    return sorted(
        p.name for p in directory.iterdir() if TEMP_MARKER in p.name or p.name.endswith(LOCK_SUFFIX) or p.is_dir()
    )


@pytest.mark.parametrize(
    ("signum", "fraction"), [(signal.SIGTERM, f) for f in (0.2, 0.5, 0.8)] + [(signal.SIGHUP, 0.5)]
)
def test_terminated_patch_removes_its_temporaries(inputs, tmp_path, signum, fraction):
    target, donor, finished, seconds = inputs
    before = {**file_bytes(target), **file_bytes(donor)}
    out = tmp_path / "model.ckpt"
    process = subprocess.Popen(patch_command(target, donor, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(seconds * fraction)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert b"Traceback" not in stderr
    assert {**file_bytes(target), **file_bytes(donor)} == before
    assert leftovers(tmp_path) == []
    if process.returncode == 0:  # finished before the signal landed
        assert check(out).findings == ()
        return
    assert process.returncode == -signum  # ended by the signal, as its sender asked, after cleaning up
    if (tmp_path / "model.ckpt.index").exists():  # terminated after the renames: complete
        assert len(check(out).variables) == finished["variables"]
    else:
        assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def big_keras(tmp_path_factory):
    """The stats_removed .keras with 200 MB of stored ballast, so that a patch takes long enough to interrupt."""
    path = tmp_path_factory.mktemp("keras") / "model.keras"
    with zipfile.ZipFile(KERAS / "stats_removed" / "model.keras") as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            out.writestr(info, source.read(info))
        out.writestr(zipfile.ZipInfo("assets/ballast.bin"), bytes(200_000_000), zipfile.ZIP_STORED)
    command = patch_command(path, KERAS / "healthy" / "model.keras", path.parent / "done.keras")
    start = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    return path, time.monotonic() - start


@pytest.mark.parametrize("fraction", [0.5, 0.7, 0.9])
def test_terminated_keras_patch_leaves_no_temporary_file_or_directory(big_keras, tmp_path, fraction):
    target, seconds = big_keras
    out = tmp_path / "fixed.keras"
    process = subprocess.Popen(
        patch_command(target, KERAS / "healthy" / "model.keras", out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(seconds * fraction)
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    assert b"Traceback" not in stderr and b"unexpected" not in stderr
    # Reading HDF5 puts the CLI under the stall watchdog, whose supervising parent forwards SIGTERM to the
    # worker and then dies by the signal the worker died by.
    assert process.returncode in (0, -signal.SIGTERM)
    assert leftovers(tmp_path) == []
    if out.exists():  # the fixture trained 8 steps at momentum 0.99, so bn-stats-stale rightly warns
        assert {f.code for f in check(out).findings} <= {"BN005"}


def test_two_patches_to_one_output_at_once(inputs, tmp_path):
    target, donor, finished, _ = inputs
    out = tmp_path / "model.ckpt"
    command = [*patch_command(target, donor, out), "--force"]
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    results = []
    for process in processes:
        _, stderr = process.communicate(timeout=120)  # closes the pipe
        results.append((process.returncode, stderr.decode()))
    assert 0 in [code for code, _ in results]
    for code, stderr in results:
        assert code == 0 or (code == 2 and "another ckptdoctor is writing this output" in stderr), stderr
    report = check(out)
    assert report.findings == ()
    assert len(report.variables) == finished["variables"]
    assert leftovers(tmp_path) == []
