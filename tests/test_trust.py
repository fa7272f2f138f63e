"""The red-team audit of issue 8 ("Trust"): each hostile input it found, built here, and what must hold.

Data loss (a report or a lock or debris clean-up replacing an input), a re-check that ignored the policy,
HDF5 chunks inflating without bound, a quadratic object graph, a watchdog that killed a healthy archive and
printed a raw file name, an error after a good output was written, and option injection through action.yml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import CLI_TIMEOUT, FIXTURE_BUNDLES, KERAS, cli_env, copy_checkpoint, file_bytes, run_cli
from test_bounds import measured, within_bounds

from ckptdoctor import dtypes
from ckptdoctor.formats import protos
from ckptdoctor.formats.crc import crc32c, mask
from ckptdoctor.formats.object_graph import OBJECT_GRAPH_KEY
from ckptdoctor.formats.tf_bundle import encode_string_tensor
from ckptdoctor.writer.bundle import BundleWriter

# ---- 6: a variable with 100k parents is not quadratic -------------------------------------------------


def test_object_graph_variable_with_100k_parents(tmp_path):
    parents = 100_000
    graph = protos.TrackableObjectGraph()
    root = graph.nodes.add()
    variable_id = parents + 1
    for index in range(parents):
        root.children.add(node_id=index + 1, local_name=f"p{index}")
    for _ in range(parents):
        graph.nodes.add().children.add(node_id=variable_id, local_name="v")
    key = "p0/v/.ATTRIBUTES/VARIABLE_VALUE"
    graph.nodes.add().attributes.add(name="VARIABLE_VALUE", checkpoint_key=key)
    raw, crc = encode_string_tensor([graph.SerializeToString()])
    assert len(raw) > 1_000_000
    writer = BundleWriter(str(tmp_path / "ckpt"))
    writer.add(OBJECT_GRAPH_KEY.encode(), dtypes.BY_NAME["string"].code, (), raw, crc)
    value = b"\0\0\x80?"  # 1.0f
    writer.add(key.encode(), dtypes.BY_NAME["float32"].code, (1,), value, mask(crc32c(value)))
    writer.commit()
    code, out, err, peak, seconds = measured("inspect", tmp_path / "ckpt")
    within_bounds(code, out, err, peak, seconds, 0)
    assert "p0/" in out and "v " in out


# ---- 9: the stall message shows the file name escaped -------------------------------------------------


def test_watchdog_stall_message_escapes_the_file_name():
    """The real supervisor and worker: the worker names a hostile file, then makes no progress."""
    script = (
        "import time\n"
        "from ckptdoctor import watchdog\n"
        "watchdog._fork(0.3, 2)\n"
        "watchdog.subject('evil\\x1b[2J\\rOK.keras')\n"
        "time.sleep(30)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=CLI_TIMEOUT, env=cli_env()
    )
    assert result.returncode == 2
    assert "\x1b" not in result.stderr and "\r" not in result.stderr
    assert result.stderr.startswith("ckptdoctor: error: evil\\x1b[2J\\x0dOK.keras: no progress for 0.3 s")
    assert len(result.stderr.splitlines()) == 1


# ---- 1: check --output never replaces what it checks --------------------------------------------------


def _one_line_refusal(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1 and "must not be one of the inputs" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("how", ["same-path", "hard-link", "reference"])
def test_check_output_onto_a_checked_keras_file_is_refused(tmp_path, how):
    model = tmp_path / "k1" / "model.keras"
    model.parent.mkdir()
    shutil.copy(KERAS / "healthy" / "model.keras", model)
    before = model.read_bytes()
    report = model
    args: list[object] = [model]
    if how == "hard-link":
        report = tmp_path / "report.json"
        os.link(model, report)
    elif how == "reference":
        args = [KERAS / "healthy" / "model.keras", "--reference", model]
    _one_line_refusal(run_cli("check", *args, "-f", "json", "-o", report))
    assert model.read_bytes() == before


def test_check_output_through_a_symlink_to_a_bundle_file_is_refused(tmp_path):
    prefix = copy_checkpoint(FIXTURE_BUNDLES["finetune_full"], tmp_path / "t1")
    before = file_bytes(prefix)
    (tmp_path / "linkidx").symlink_to(f"{prefix}.index")
    _one_line_refusal(run_cli("check", tmp_path / "t1", "-f", "sarif", "-o", "linkidx", cwd=tmp_path))
    _one_line_refusal(run_cli("check", prefix, "-f", "sarif", "-o", f"{prefix}.data-00000-of-00001"))
    assert file_bytes(prefix) == before
    assert (tmp_path / "linkidx").is_symlink()
