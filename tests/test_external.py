"""A checkpoint is one file: HDF5 data stored in, or linked to, another file is a finding, never followed.

Each case is a real Keras file whose BatchNorm moving_variance was replaced, with h5py, by a dataset that
points at a "secret" file. h5py and Keras would read the secret as weights; ckptdoctor must list the
dataset, report INT010, refuse to patch, and never let the secret's bytes into any output."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import FIXTURES, KERAS, run_cli

SECRET = b"SECRET-API-KEY-0123456789abcdef!"  # 32 bytes: exactly eight float32 values
V3_VARIANCE = "layers/batch_normalization/vars/3"
LEGACY_VARIANCE = "model_weights/bn_default/bn_default/moving_variance:0"


def _replace(path: Path, name: str, how: str, secret: Path) -> None:
    """Swap dataset `name` of `path` for one whose values come from `secret` (by `how`)."""
    with h5py.File(path, "r+") as file:
        shape, dtype = file[name].shape, file[name].dtype
        del file[name]
        if how == "external-storage":
            file.create_dataset(name, shape=shape, dtype=dtype, external=[(str(secret), 0, len(SECRET))])
        elif how == "external-link":
            with h5py.File(secret.with_suffix(".h5"), "w") as other:
                other["stolen"] = np.frombuffer(SECRET, dtype=dtype)
            file[name] = h5py.ExternalLink(str(secret.with_suffix(".h5")), "/stolen")
        else:  # a virtual dataset mapped from another file
            with h5py.File(secret.with_suffix(".h5"), "w") as other:
                other["stolen"] = np.frombuffer(SECRET, dtype=dtype)
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[:] = h5py.VirtualSource(str(secret.with_suffix(".h5")), "stolen", shape=shape)
            file.create_virtual_dataset(name, layout)


CASES = [
    (kind, layout)
    for kind in ("external-storage", "external-link", "virtual")
    for layout in ("weights.h5", "legacy.h5")
]


@pytest.fixture(params=CASES, ids=[f"{kind}-{layout}" for kind, layout in CASES])
def hostile(request, tmp_path):
    kind, layout = request.param
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    if layout == "weights.h5":
        path, name = tmp_path / "donor.weights.h5", V3_VARIANCE
        shutil.copy(KERAS / "healthy" / "model.weights.h5", path)
        target = KERAS / "stats_removed" / "model.weights.h5"
    else:
        path, name = tmp_path / "donor.h5", LEGACY_VARIANCE
        shutil.copy(FIXTURES / "keras2" / "model.h5", path)
        target = path  # only the refusal matters here: the donor side is tested with .weights.h5
    _replace(path, name, kind, secret)
    with h5py.File(path) as file:  # the premise: h5py itself would hand the secret over as weights
        assert np.asarray(file[name]).tobytes() == SECRET
    return path, name, target


def _no_secret_anywhere(result, directory: Path) -> None:
    assert SECRET.decode() not in result.stdout + result.stderr
    for produced in directory.rglob("*"):
        if produced.is_file() and produced.name not in ("secret.bin", "secret.h5"):
            assert SECRET not in produced.read_bytes(), produced


def test_check_reports_int010_and_never_reads_the_secret(hostile, tmp_path):
    path, name, _ = hostile
    result = run_cli("check", path, "--format", "json")
    assert result.returncode == 1, result.stderr
    assert '"INT010"' in result.stdout and name in result.stdout
    assert "Traceback" not in result.stderr
    _no_secret_anywhere(result, tmp_path)


def test_inspect_lists_the_dataset_without_reading_it(hostile, tmp_path):
    path, name, _ = hostile
    result = run_cli("inspect", path, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert name in result.stdout
    _no_secret_anywhere(result, tmp_path)


def test_patch_refuses_external_data_in_target_or_donor(hostile, tmp_path):
    path, name, target = hostile
    out = tmp_path / "out" / Path(target).name
    for args in ((target, path), (path, target)):
        result = run_cli("patch", args[0], "--from", args[1], "--out", out)
        assert result.returncode == 2, result.stdout + result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert name in line and "refuses data outside the file" in line
        assert not out.exists()
        _no_secret_anywhere(result, tmp_path)


def test_library_read_refuses_in_one_line(hostile):
    from ckptdoctor.formats import open_checkpoint
    from ckptdoctor.model import CheckpointError

    path, name, _ = hostile
    reader, _ = open_checkpoint(path)
    try:
        with pytest.raises(CheckpointError, match="never follows it") as error:
            reader.read(name)
        assert "\n" not in str(error.value)
    finally:
        reader.close()


def test_external_link_to_a_fifo_never_opens_it(tmp_path):
    """A link to a FIFO would block HDF5 forever if followed: listing and checking must not touch it."""
    path = tmp_path / "model.weights.h5"
    shutil.copy(KERAS / "healthy" / "model.weights.h5", path)
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    with h5py.File(path, "r+") as file:
        del file[V3_VARIANCE]
        file[V3_VARIANCE] = h5py.ExternalLink(str(fifo), "/x")
        file["stray"] = h5py.ExternalLink(str(fifo), "/y")  # outside the layout: found by the link walk
    result = run_cli("check", path, "--format", "json")
    assert result.returncode == 1, result.stderr
    assert result.stdout.count('"INT010"') == 2
