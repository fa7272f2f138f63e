"""The red-team audit of issue 8 ("Trust"): each hostile input it found, built here, and what must hold.

Data loss (a report or a lock or debris clean-up replacing an input), a re-check that ignored the policy,
HDF5 chunks inflating without bound, a quadratic object graph, a watchdog that killed a healthy archive and
printed a raw file name, an error after a good output was written, and option injection through action.yml."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import h5py
import pytest
from conftest import CLI_TIMEOUT, FIXTURE_BUNDLES, KERAS, ROOT, cli_env, copy_checkpoint, file_bytes, run_cli
from test_bounds import measured, within_bounds

from ckptdoctor import dtypes
from ckptdoctor.formats import protos
from ckptdoctor.formats.crc import crc32c, mask
from ckptdoctor.formats.object_keys import OBJECT_GRAPH_KEY
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


# ---- 2, 3, 8: the writer's debris clean-up and locks never touch an input, and refuse before writing ----

DEAD_WRITER_TEMP = ".tmp-ckptdoctor-999999-abcdefabcdef"  # the pid of no live process (pid_max is lower)


def test_patch_spares_a_donor_named_like_a_dead_writers_temporary(tmp_path):
    donor = tmp_path / f"out.keras{DEAD_WRITER_TEMP}"
    shutil.copy(KERAS / "healthy" / "model.keras", donor)
    shutil.copy(KERAS / "stats_removed" / "model.keras", tmp_path / "model.keras")
    before = donor.read_bytes()
    result = run_cli("patch", "model.keras", "--from", donor.name, "--out", "out.keras", cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr
    assert donor.read_bytes() == before
    assert (tmp_path / "out.keras").read_bytes().startswith(b"PK")


def test_state_file_debris_clean_up_spares_an_input(tmp_path):
    """The state file's dead temporaries are cleared, except a file that is an input (here by a hard link)."""
    from ckptdoctor.writer.state import update_state_file

    debris = tmp_path / f"checkpoint{DEAD_WRITER_TEMP}"
    disguised = tmp_path / f"checkpoint{DEAD_WRITER_TEMP.replace('abcdef', '012345')}"
    debris.write_bytes(b"left by a killed run")
    shutil.copy(KERAS / "healthy" / "model.keras", tmp_path / "donor.keras")
    os.link(tmp_path / "donor.keras", disguised)
    before = disguised.read_bytes()
    update_state_file(str(tmp_path / "fixed"), [str(tmp_path / "donor.keras")])
    assert not debris.exists()
    assert disguised.read_bytes() == before


def test_patch_refuses_a_donor_named_like_the_output_lock(tmp_path):
    donor = tmp_path / "out.keras.ckptdoctor-lock"
    shutil.copy(KERAS / "healthy" / "model.keras", donor)
    before = donor.read_bytes()
    result = run_cli("patch", KERAS / "stats_removed" / "model.keras", "--from", donor, "--out", tmp_path / "out.keras")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "must not be one of the inputs" in result.stderr and "ckptdoctor-lock" in result.stderr
    assert donor.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [donor.name]


@pytest.mark.parametrize("planted", ["non-empty file", "directory", "symlink"])
def test_a_lock_path_holding_something_else_is_refused_and_kept(tmp_path, planted):
    lock = tmp_path / "out.keras.ckptdoctor-lock"
    if planted == "non-empty file":
        lock.write_bytes(b"someone's data")
    elif planted == "directory":
        lock.mkdir()
    else:
        lock.symlink_to(tmp_path / "elsewhere")
    model = KERAS / "stats_removed" / "model.keras"
    result = run_cli("patch", model, "--from", KERAS / "healthy" / "model.keras", "--out", tmp_path / "out.keras")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "not an empty lock file" in result.stderr
    assert not (tmp_path / "out.keras").exists()
    assert os.path.lexists(lock) and (planted != "non-empty file" or lock.read_bytes() == b"someone's data")


def test_a_state_lock_that_cannot_be_taken_stops_the_write_before_it(tmp_path):
    (tmp_path / "checkpoint.ckptdoctor-lock").mkdir()
    result = run_cli(
        "patch",
        FIXTURE_BUNDLES["finetune_trainable"],
        "--from",
        FIXTURE_BUNDLES["finetune_full"],
        "--out",
        tmp_path / "fixed",
    )
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.ckptdoctor-lock"]


# ---- 4: patch's re-check follows every policy key, as check does -------------------------------------


def test_patch_recheck_applies_the_policy_stale_threshold(tmp_path):
    """The fixtures' statistics keep 92% of their start: stale at the default threshold, not above 0.95."""
    model = KERAS / "stats_removed" / "model.keras"
    donor = KERAS / "healthy" / "model.keras"
    default = run_cli("patch", model, "--from", donor, "--out", tmp_path / "default.keras", cwd=tmp_path)
    assert default.returncode == 0 and "BN005 bn-stats-stale" in default.stdout, default.stdout + default.stderr
    (tmp_path / "pyproject.toml").write_text('[tool.ckptdoctor]\nstale-threshold = 0.95\nfail-on = "warning"\n')
    patched = run_cli("patch", model, "--from", donor, "--out", tmp_path / "out.keras", cwd=tmp_path)
    checked = run_cli("check", tmp_path / "out.keras", cwd=tmp_path)
    assert "BN005" not in patched.stdout + checked.stdout, patched.stdout
    assert patched.returncode == checked.returncode == 0, patched.stdout + patched.stderr


# ---- 5: compressed HDF5 chunks inflate within bounds ---------------------------------------------------


def _zlib_zeros(nbytes: int) -> bytes:
    """A zlib stream of `nbytes` zero bytes, built from one compressed megabyte (full flushes make the blocks
    independent) and the Adler-32 of zeros, so a gigabyte chunk costs milliseconds to build."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    adler = ((nbytes % 65521) << 16) | 1  # a = 1 + sum(bytes), b = sum of the running a's, both mod 65521
    return b"\x78\xda" + segment * (nbytes >> 20) + compressor.flush() + struct.pack(">I", adler)


def _with_zero_chunks(path: Path, datasets: int, chunks: int, chunk_bytes: int) -> Path:
    """The healthy .weights.h5 plus `datasets` float32 datasets of `chunks` gzip chunks of zeros each,
    written with write_direct_chunk: what h5py stores, and what HDF5 inflates on reading."""
    shutil.copy(KERAS / "healthy" / "model.weights.h5", path)
    data, per_chunk = _zlib_zeros(chunk_bytes), chunk_bytes // 4
    with h5py.File(path, "r+") as file:
        for index in range(datasets):
            shape, layout = (chunks * per_chunk,), (per_chunk,)
            dataset = file.create_dataset(f"layers/extra/vars/{index}", shape, "<f4", chunks=layout, compression="gzip")
            for chunk in range(chunks):
                dataset.id.write_direct_chunk((chunk * per_chunk,), data)
    return path


def test_zero_chunk_builder_is_what_hdf5_reads(tmp_path):
    path = _with_zero_chunks(tmp_path / "model.weights.h5", 1, 2, 1 << 20)
    with h5py.File(path, "r") as file:
        values = file["layers/extra/vars/0"][()]
    assert values.shape == (1 << 19,) and not values.any()


@pytest.mark.parametrize(
    ("datasets", "chunks", "chunk_mib", "why"),
    [
        (1, 1, 256, "over the 32 MiB cap"),  # one chunk of 256 MiB in 329 KB
        (1, 32, 256, "over the 32 MiB cap"),  # 32 of them: 8 GiB in 8.4 MB
        (1, 8, 32, "over the 100:1"),  # chunks within the cap, a dataset a thousand times its stored size
        (24, 1, 16, "past what this file's compressed data may inflate to"),  # each small, too many in all
    ],
)
@pytest.mark.parametrize("command", ["check", "diff"])
def test_compressed_chunks_inflate_within_bounds(tmp_path, datasets, chunks, chunk_mib, why, command):
    path = _with_zero_chunks(tmp_path / "model.weights.h5", datasets, chunks, chunk_mib << 20)
    before = path.read_bytes()
    args = ("check", path, "-f", "json") if command == "check" else ("diff", path, path, "-f", "json")
    code, out, err, peak, seconds = measured(*args)
    within_bounds(code, out, err, peak, seconds, 1)
    if command == "check":
        assert why in out and "size-mismatch" in out
    else:
        assert '"unreadable"' in out
    assert path.read_bytes() == before


# ---- 7: the .keras CRC pass reports progress, so the watchdog sees a large archive move -----------------


def test_keras_crc_pass_reports_progress_per_megabyte(tmp_path):
    from ckptdoctor.formats import open_checkpoint

    path = tmp_path / "big.keras"
    shutil.copy(KERAS / "healthy" / "model.keras", path)
    asset = 24 << 20
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("assets/vocabulary.bin", os.urandom(asset))
    reader, _ = open_checkpoint(path)
    calls: list[tuple[int, int]] = []
    try:
        result = reader.scan(lambda done, total: calls.append((done, total)))
    finally:
        reader.close()
    assert not result.problems
    assert len(calls) >= asset >> 20
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert len({total for _, total in calls}) == 1 and calls[-1][0] == calls[-1][1] >= asset


# ---- 10: action.yml passes matched files after `--`, and the CLI takes them as paths --------------------


def test_action_file_named_like_an_option_is_checked_as_a_path(tmp_path):
    """The action's real check script, running the real CLI, on a glob matching `--output=ok.keras`."""
    from test_forged_output import _run_scripts

    (script,) = [s for _, s in _run_scripts((ROOT / "action.yml").read_text()) if "ckptdoctor check" in s]
    hostile = tmp_path / "--output=ok.keras"
    shutil.copy(KERAS / "healthy" / "model.keras", hostile)
    before = hostile.read_bytes()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ckptdoctor").write_text(f'#!/bin/sh\nexec {sys.executable} -m ckptdoctor "$@"\n')
    (bin_dir / "ckptdoctor").chmod(0o755)
    env = cli_env(
        {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "GITHUB_OUTPUT": str(tmp_path / "github_output"),
            "CKPTDOCTOR_PATHS": "*.keras",
            "CKPTDOCTOR_REFERENCE": "",
            "CKPTDOCTOR_FAIL_ON": "error",
            "CKPTDOCTOR_SARIF_FILE": "out.sarif",
        }
    )
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, timeout=CLI_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "github_output").read_text() == "status=0\n", result.stderr
    assert '"uri": "--output%3Dok.keras"' in (tmp_path / "out.sarif").read_text()  # checked, as a path
    assert not (tmp_path / "ok.keras").exists()
    assert hostile.read_bytes() == before
