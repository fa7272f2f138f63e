"""Writers never destroy an input and never report failure for a good output (or success for a bad one).

Each test builds the hostile situation in tmp_path, runs the real CLI as a subprocess, and asserts the exit
code, the one-line message, and that every input is byte-identical afterwards."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_BUNDLES, KERAS, copy_checkpoint, file_bytes, run_cli

from ckptdoctor import check
from ckptdoctor.formats.tf_bundle import BundleReader
from ckptdoctor.model import CheckpointError
from ckptdoctor.writer.bundle import BundleWriter

TRAINABLE = FIXTURE_BUNDLES["finetune_trainable"]
FULL = FIXTURE_BUNDLES["finetune_full"]
STATISTICS = [
    f"net/{layer}/{stat}"
    for layer in ("conv1/BatchNorm", "conv2/BatchNorm", "batch_normalization", "batch_normalization_1")
    for stat in ("moving_mean", "moving_variance")
]


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd)


def patch_cli(target, donor, out, *extra) -> subprocess.CompletedProcess:
    return run("patch", target, "--from", donor, "--out", out, *extra)


def assert_refused(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


# ---- the output reaches an input ---------------------------------------------------------------


def test_out_through_a_symlinked_directory_to_the_donor(tmp_path):
    donor = copy_checkpoint(FULL, tmp_path / "donor")
    (tmp_path / "link").symlink_to(tmp_path / "donor", target_is_directory=True)
    before = file_bytes(donor)
    result = patch_cli(TRAINABLE, donor, tmp_path / "link" / donor.name, "--force")
    assert_refused(result, "the output must not be one of the inputs")
    assert file_bytes(donor) == before


def test_out_whose_index_is_a_symlink_to_the_donors(tmp_path):
    donor = copy_checkpoint(FULL, tmp_path / "donor")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "fixed.index").symlink_to(Path(f"{donor}.index"))
    before = file_bytes(donor)
    assert_refused(patch_cli(TRAINABLE, donor, tmp_path / "out" / "fixed", "--force"), "must not be one of the inputs")
    assert file_bytes(donor) == before


def test_out_hard_linked_to_the_target(tmp_path):
    target = copy_checkpoint(TRAINABLE, tmp_path / "target")
    (tmp_path / "out").mkdir()
    os.link(f"{target}.data-00000-of-00001", tmp_path / "out" / "fixed.data-00000-of-00001")
    before = file_bytes(target)
    assert_refused(patch_cli(target, FULL, tmp_path / "out" / "fixed", "--force"), "must not be one of the inputs")
    assert file_bytes(target) == before


def test_stale_shards_to_delete_may_not_be_the_donors(tmp_path):
    # --out in the donor's own directory under its own prefix but reached by another name: its 1-shard files
    # would be replaced, and any other shard count deleted; the sharded fixture is the donor here.
    donor = copy_checkpoint(FIXTURE_BUNDLES["sharded"], tmp_path / "donor")
    (tmp_path / "link").symlink_to(tmp_path / "donor", target_is_directory=True)
    before = file_bytes(donor)
    result = patch_cli(donor, donor, tmp_path / "link" / donor.name, "--force")
    assert_refused(result, "must not be one of the inputs")
    assert file_bytes(donor) == before


@pytest.mark.parametrize("member", ["index", "data-00000-of-00001"])
def test_keras_out_named_like_a_donor_member_file(tmp_path, member):
    donor = copy_checkpoint(KERAS / "healthy" / "ckpt" / "model", tmp_path / "donor")
    before = file_bytes(donor)
    target = KERAS / "stats_removed" / "model.weights.h5"
    result = patch_cli(target, donor, f"{donor}.{member}", "--force")
    assert_refused(result, "must not be one of the inputs")
    assert file_bytes(donor) == before


def test_keras_out_symlinked_to_the_target(tmp_path):
    target = tmp_path / "model.weights.h5"
    shutil.copy(KERAS / "stats_removed" / "model.weights.h5", target)
    (tmp_path / "fixed.weights.h5").symlink_to(target)
    before = target.read_bytes()
    result = patch_cli(target, KERAS / "healthy" / "model.weights.h5", tmp_path / "fixed.weights.h5", "--force")
    assert_refused(result, "must not be one of the inputs")
    assert target.read_bytes() == before


# ---- another run holds the output --------------------------------------------------------------


def test_a_held_lock_refuses_the_second_writer_before_it_writes(tmp_path):
    out = tmp_path / "fixed"
    with open(f"{out}.ckptdoctor-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = patch_cli(TRAINABLE, FULL, out)
    assert_refused(result, f"{out}: another ckptdoctor is writing this output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.ckptdoctor-lock"]


def test_debris_of_a_live_writer_is_kept_and_of_a_dead_one_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    live = tmp_path / f"fixed.index.tmp-ckptdoctor-{os.getppid()}-0123456789ab"
    gone = tmp_path / f"fixed.data-00000-of-00001.tmp-ckptdoctor-{dead.pid}-0123456789ab"
    live.write_bytes(b"a live writer's bytes")
    gone.write_bytes(b"partial")
    assert patch_cli(TRAINABLE, FULL, tmp_path / "fixed").returncode == 0
    assert live.exists() and not gone.exists()
    assert not (tmp_path / "fixed.ckptdoctor-lock").exists()


# ---- nothing fails after the output is written -------------------------------------------------


def test_donor_path_with_markup_is_printed_literally(tmp_path):
    donor = copy_checkpoint(FULL, tmp_path / "don[/]or [bold]x")
    result = patch_cli(TRAINABLE, donor, tmp_path / "out" / "fixed")
    assert result.returncode == 0, result.stderr
    assert f"donor {donor}\n" in result.stdout


@pytest.mark.parametrize("kind", ["binary", "directory", "fifo", "not-a-state"])
def test_unusable_state_file_beside_out_is_refused_before_writing(tmp_path, kind):
    state = tmp_path / "checkpoint"
    if kind == "binary":
        state.write_bytes(b"\x00\xff\xfe\x89HDF\r\n")
    elif kind == "directory":
        state.mkdir()
    elif kind == "fifo":
        os.mkfifo(state)
    else:
        state.write_text("this is not a CheckpointState\n")
    listing = sorted(p.name for p in tmp_path.iterdir())
    result = patch_cli(TRAINABLE, FULL, tmp_path / "fixed")
    assert_refused(result, f"{state}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


def test_state_file_of_another_run_keeps_its_checkpoints_and_timestamps(tmp_path, tf):
    for step in (1, 5):
        copy_checkpoint(TRAINABLE, tmp_path)
        for file in tmp_path.glob("model.ckpt-20.*"):
            file.rename(tmp_path / file.name.replace("ckpt-20", f"ckpt-{step}"))
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt-5"\n'
        'all_model_checkpoint_paths: "model.ckpt-1"\nall_model_checkpoint_paths: "model.ckpt-5"\n'
        "all_model_checkpoint_timestamps: 100.5\nall_model_checkpoint_timestamps: 200.5\n"
    )
    result = patch_cli(TRAINABLE, FULL, tmp_path / "fixed")
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path / 'checkpoint'}: latest was model.ckpt-5, now fixed" in result.stdout
    state = tf.train.get_checkpoint_state(str(tmp_path))  # TensorFlow's own reading of the file
    assert [Path(p).name for p in state.all_model_checkpoint_paths] == ["model.ckpt-1", "model.ckpt-5", "fixed"]
    assert list(state.all_model_checkpoint_timestamps)[:2] == [100.5, 200.5]
    assert len(state.all_model_checkpoint_timestamps) == 3
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "fixed")


def test_keras_output_named_like_a_bundle_index_rechecks_clean(tmp_path):
    out = tmp_path / "fixed.index"
    result = patch_cli(KERAS / "stats_removed" / "model.weights.h5", KERAS / "healthy" / "model.weights.h5", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert out.read_bytes().startswith(b"\x89HDF")
    assert not result.stderr


# ---- check --output to things that are not regular files -----------------------------------------


def test_check_output_to_a_fifo_writes_through_it(tmp_path):
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = run("check", FULL, "--format", "json", "--output", fifo)
    reader.join(timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(received[0])["findings"] == []
    assert fifo.is_fifo()


def test_check_output_to_dev_stdout_appends_to_a_redirected_log(tmp_path):
    log = tmp_path / "log"
    log.write_text("earlier line\n")
    with open(log, "a") as stdout:
        result = subprocess.run(
            [sys.executable, "-m", "ckptdoctor", "check", str(FULL), "-f", "json", "-o", "/dev/stdout"],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    text = log.read_text()
    assert text.startswith("earlier line\n")
    assert json.loads(text.removeprefix("earlier line\n"))["findings"] == []


def test_check_output_through_a_symlink_keeps_the_link(tmp_path):
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "report.json").symlink_to(tmp_path / "real.json")
    assert run("check", FULL, "-f", "json", "-o", tmp_path / "report.json").returncode == 0
    assert (tmp_path / "report.json").is_symlink()
    assert json.loads((tmp_path / "real.json").read_text())["findings"] == []


# ---- partitioned variables -----------------------------------------------------------------------


def partitioned_donor(tf, prefix: Path) -> dict[str, np.ndarray]:
    """A donor whose moving statistics are each saved as two slices, as a partitioner saves them."""
    full = tf.train.load_checkpoint(str(FULL))
    values = {name: full.get_tensor(name) for name in STATISTICS}
    names, slices, tensors = [], [], []
    for name, value in values.items():
        for start in (0, 4):
            names.append(name)
            slices.append(f"8 {start},4")
            tensors.append(tf.constant(value[start : start + 4]))
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=slices, tensors=tensors)
    return values


def without_entry(source: Path, out: Path, drop: bytes) -> None:
    """Rewrite a bundle with one index entry left out, every other byte copied as stored."""
    with BundleReader(str(source)) as reader:
        writer = BundleWriter(str(out))
        for key in sorted(reader.entries):
            if key != drop:
                writer.copy(reader, reader.entries[key])
        writer.commit()


def test_partitioned_donor_statistics_are_copied_with_their_slices(tmp_path, tf):
    donor = tmp_path / "donor" / "model.ckpt"
    values = partitioned_donor(tf, donor)
    out = tmp_path / "out" / "fixed"
    result = patch_cli(TRAINABLE, donor, out)
    assert result.returncode == 0, result.stdout + result.stderr
    reader = tf.train.load_checkpoint(str(out))
    for name, value in values.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value, strict=True)
    assert check(out).findings == ()


def test_check_flags_a_partitioned_variable_missing_a_slice(tmp_path, tf):
    source = FIXTURE_BUNDLES["partitioned"]
    with BundleReader(str(source)) as reader:
        slice_keys = sorted(k for k in reader.entries if k.startswith(b"\x00"))
    out = tmp_path / "model.ckpt"
    without_entry(source, out, slice_keys[1])
    with pytest.raises(tf.errors.OpError):
        tf.train.load_checkpoint(str(out)).get_tensor("embedding")  # TensorFlow cannot read it either
    findings = check(out).findings
    assert [(f.code, f.subject) for f in findings] == [("INT007", "embedding")]
    assert "of this partitioned variable is missing" in findings[0].message


def test_partitioned_donor_missing_a_slice_is_refused(tmp_path, tf):
    complete = tmp_path / "complete" / "model.ckpt"
    partitioned_donor(tf, complete)
    with BundleReader(str(complete)) as reader:
        first_slice = min(k for k in reader.entries if k.startswith(b"\x00"))
    donor = tmp_path / "donor" / "model.ckpt"
    donor.parent.mkdir()
    without_entry(complete, donor, first_slice)
    result = patch_cli(TRAINABLE, donor, tmp_path / "out" / "fixed")
    assert_refused(result, "slice [(0, 4)] of partitioned net/")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError):
        check(tmp_path / "out" / "fixed")
