"""A few KB never cost GBs: each hostile file is built small here and checked by the CLI in a child process
whose peak memory (os.wait4) and time are measured. Also: files that are not regular files, thousands of
shards under a low descriptor limit, stand-ins (LFS pointers, HTML pages) for bundle files, and the stall
watchdog on a healthy dataset bigger than one read."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import (
    FIXTURE_BUNDLES,
    FLOAT32,
    KERAS,
    bundle_header,
    cli_env,
    copy_checkpoint,
    entry_proto,
    write_index,
)

from ckptdoctor import dtypes
from ckptdoctor.formats import protos
from ckptdoctor.formats.crc import crc32c, mask
from ckptdoctor.formats.object_keys import OBJECT_GRAPH_KEY
from ckptdoctor.formats.ordered_code import slice_key
from ckptdoctor.formats.sstable import TableBuilder
from ckptdoctor.formats.tf_bundle import encode_string_tensor

MEMORY_LIMIT = 512 << 20
TIME_LIMIT = 30


# The CLI's own peak, written by the process that ran it: a forked child's ru_maxrss starts at the forking
# process's resident size (this pytest, hundreds of MiB once TensorFlow is imported), VmHWM after exec does not.
_PEAK_REPORTER = """
import atexit, runpy, sys
report = sys.argv.pop(1)
def peak():
    with open('/proc/self/status') as status, open(report, 'a') as out:
        out.write(next(line for line in status if line.startswith('VmHWM')))
atexit.register(peak)  # the worker the stall watchdog forks exits normally and writes it; the supervisor does not
sys.argv[0] = 'ckptdoctor'
runpy.run_module('ckptdoctor', run_name='__main__', alter_sys=True)
"""


def measured(*args, env=None, open_files: int | None = None) -> tuple[int, str, str, int, float]:
    """(exit code, stdout, stderr, peak RSS in bytes, seconds) of the CLI run in a child process.

    The address space is capped too (at 2 GiB), so a regression fails fast rather than swapping."""
    import tempfile

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        if open_files:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    report = Path(tempfile.mkstemp(prefix="ckptdoctor-peak-")[1])
    start = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", _PEAK_REPORTER, str(report), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=limits,
        env=cli_env(env),
    )
    timer = threading.Timer(TIME_LIMIT * 2, lambda: os.kill(child.pid, signal.SIGKILL))
    timer.start()
    output: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda: output.__setitem__("out", child.stdout.read())),
        threading.Thread(target=lambda: output.__setitem__("err", child.stderr.read())),
    ]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    timer.cancel()
    for reader in readers:
        reader.join()
    child.stdout.close()
    child.stderr.close()
    seconds = time.monotonic() - start
    peaks = [int(line.split()[1]) * 1024 for line in report.read_text().splitlines()]
    report.unlink()
    peak = max(peaks) if peaks else usage.ru_maxrss * 1024  # killed before exit: the (upper-bound) rusage
    return child.returncode, output["out"].decode(), output["err"].decode(), peak, seconds


def within_bounds(code, out, err, peak, seconds, expected_code) -> None:
    assert code == expected_code, out + err
    assert "Traceback" not in err
    assert peak < MEMORY_LIMIT, f"peak RSS {peak >> 20} MiB"
    assert seconds < TIME_LIMIT, f"{seconds:.1f} s"
    if expected_code == 2:
        assert len(err.strip().splitlines()) == 1, err


def _bundle(prefix: Path, entries: dict[bytes, bytes], data: bytes = b"\0" * 64, shards: int = 1) -> Path:
    return write_index(prefix, [bundle_header(shards), *sorted(entries.items())], data, shards)


# ---- the five hostile files of the issue ------------------------------------------------------------


def test_partitioned_statistics_claiming_4g_elements(tmp_path):
    """Both statistics of a BatchNorm layer declare 2^32 elements; their one slice stores 16 bytes."""
    huge = 1 << 32
    ones = np.ones(4, "<f4").tobytes()
    entries = {b"bn/beta": entry_proto([4], 16, 0, crc=mask(crc32c(ones)))}
    for name in (b"bn/moving_mean", b"bn/moving_variance"):
        entries[name] = entry_proto([huge], slices=[[(0, huge)]])
        entries[slice_key(name, [(0, huge)])] = entry_proto([huge], 16, 0)
    prefix = _bundle(tmp_path / "model.ckpt", entries, ones)
    assert Path(f"{prefix}.index").stat().st_size < 1024
    code, out, err, peak, seconds = measured("check", prefix)
    within_bounds(code, out, err, peak, seconds, 1)
    assert "INT004 size-mismatch" in out


def test_statistic_claiming_a_billion_elements_over_16_bytes(tmp_path):
    """Read as plain numbers (as the rules read statistics), a tensor is refused where its shape claims more
    than it stores: never decoded short, never allocated by its claim."""
    from ckptdoctor.formats import open_checkpoint
    from ckptdoctor.model import CheckpointError

    ones = np.ones(4, "<f4").tobytes()
    entries = {
        name: entry_proto([1 << 30 if name == b"bn/moving_mean" else 4], 16, 0, crc=mask(crc32c(ones)))
        for name in (b"bn/beta", b"bn/moving_mean", b"bn/moving_variance")
    }
    prefix = _bundle(tmp_path / "model.ckpt", entries, ones)
    reader, _ = open_checkpoint(prefix)
    with pytest.raises(CheckpointError, match="bn/moving_mean stores 16 bytes, not 4294967296"):
        reader.numbers("bn/moving_mean")
    assert reader.numbers("bn/moving_variance").tolist() == [1.0] * 4
    reader.close()
    code, out, err, peak, seconds = measured("check", prefix)
    within_bounds(code, out, err, peak, seconds, 1)
    assert "INT004 size-mismatch" in out


def _statistics_bundle(prefix: Path, mean: np.ndarray, variance: np.ndarray) -> Path:
    """A slim BatchNorm layer (beta and both statistics) with the statistics given, CRCs right."""
    tensors = {b"bn/beta": np.ones(4, "<f4"), b"bn/moving_mean": mean, b"bn/moving_variance": variance}
    entries, data = {}, b""
    for name, values in tensors.items():
        raw = values.tobytes()
        code = dtypes.BY_NAME[values.dtype.name].code
        entries[name] = entry_proto(values.shape, len(raw), len(data), crc=mask(crc32c(raw)), dtype=code)
        data += raw
    return _bundle(prefix, entries, data)


def _strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_float64_statistics_next_to_the_largest_float_give_a_finite_summary(tmp_path):
    """Their sum overflows (fsum raised, exit 2); a difference of two of them too (a quartile was Infinity, and the
    JSON report held `Infinity`, which no JSON parser takes)."""
    largest = np.finfo("<f8").max
    prefix = _statistics_bundle(
        tmp_path / "model.ckpt", np.array([largest, largest, -largest, largest], "<f8"), np.full(4, largest, "<f8")
    )
    code, out, err, peak, seconds = measured("check", prefix, "--format", "json")
    within_bounds(code, out, err, peak, seconds, 0)
    summary = _strict_json(out)["batchnorm_stats"][0]
    assert summary["moving_mean"]["max"] == largest and summary["moving_variance"]["mean"] == largest
    assert -largest <= summary["moving_mean"]["q1"] <= summary["moving_mean"]["mean"] <= largest


def test_a_statistic_of_16_million_elements(tmp_path):
    """Past SORTED_IN_PYTHON_UP_TO a statistic is summarised by numpy: as Python floats a 64 MB one needs ~1 GiB."""
    mean = np.linspace(-1, 1, 16 << 20, dtype="<f4")
    prefix = _statistics_bundle(tmp_path / "model.ckpt", mean, np.ones(4, "<f4"))
    code, out, err, peak, seconds = measured("check", prefix, "--format", "json")
    within_bounds(code, out, err, peak, seconds, 0)
    summary = _strict_json(out)["batchnorm_stats"][0]["moving_mean"]
    assert (summary["count"], summary["min"], summary["median"], summary["max"]) == (16 << 20, -1, 0, 1)


def test_v1_splat_of_a_billion_values(tmp_path):
    """One NaN standing for 2^30 float32 values: counted from the one value, never expanded."""
    header = protos.SavedTensorSlices()
    meta = header.meta.tensor.add(name="bn/moving_variance", type=FLOAT32)
    meta.shape.dim.add(size=1 << 30)
    meta.slice.add()
    data = protos.SavedTensorSlices()
    data.data.name = "bn/moving_variance"
    data.data.slice.SetInParent()
    data.data.data.dtype = FLOAT32
    data.data.data.float_val.append(float("nan"))
    path = tmp_path / "model.ckpt-v1"
    with open(path, "wb") as out:
        table = TableBuilder(out)
        table.add(b"", header.SerializeToString())
        table.add(b"\x00data", data.SerializeToString())
        table.finish()
    assert path.stat().st_size < 512
    code, out, err, peak, seconds = measured("check", path, "--format", "json")
    within_bounds(code, out, err, peak, seconds, 1)
    assert f'"count": {1 << 30}' in out or str(1 << 30) in out


def test_hdf5_dataset_with_unwritten_chunks(tmp_path):
    """A (1, 2^30) float32 dataset whose chunks were never written: declared 4 GiB, stored nothing."""
    path = tmp_path / "model.weights.h5"
    shutil.copy(KERAS / "healthy" / "model.weights.h5", path)
    name = "layers/batch_normalization/vars/3"
    with h5py.File(path, "r+") as file:
        del file[name]
        file.create_dataset(name, shape=(1, 1 << 30), chunks=(1, 1 << 16), dtype="<f4")
    assert path.stat().st_size < 200_000
    code, out, err, peak, seconds = measured("check", path)
    within_bounds(code, out, err, peak, seconds, 1)
    assert "INT004 size-mismatch" in out and "chunks were ever written" in out


def _deflated(block: bytes, repeats: int) -> bytes:
    """A raw deflate stream of `block` repeated, built from one compressed copy (full flushes make the
    compressed blocks independent), so a gigabyte member costs a fraction of a second to build."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    return segment * repeats + compressor.flush()


def _zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip archive from (name, stored bytes, method, declared size, crc) members, written by hand."""
    local, central = bytearray(), bytearray()
    for name, data, method, size, crc in members:
        offset = len(local)
        encoded = name.encode()
        fields = (20, 0, method, 0, 0, crc, len(data), size, len(encoded), 0)
        local += struct.pack("<4s5HIIIHH", b"PK\x03\x04", *fields) + encoded + data
        central += struct.pack("<4s6HIIIHHHHHII", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, offset) + encoded
    end = struct.pack("<4s4HIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))


@pytest.mark.parametrize("declared", ["honest", "understated"])
def test_keras_config_inflating_to_a_gigabyte(tmp_path, declared):
    """config.json inflates to 1 GiB from about 1 MB; declared honestly, or as 100 bytes (zipfile then
    stops at the declared size and the CRC fails): either way one line, never a gigabyte in memory."""
    weights = (KERAS / "healthy" / "model.weights.h5").read_bytes()
    block = b" " * (1 << 20)
    size = 1 << 30 if declared == "honest" else 100
    path = tmp_path / "model.keras"
    _zip(
        path,
        [
            ("config.json", _deflated(block, 1024), zipfile.ZIP_DEFLATED, size, 0),
            ("model.weights.h5", weights, zipfile.ZIP_STORED, len(weights), zlib.crc32(weights)),
        ],
    )
    assert path.stat().st_size < 1_200_000
    code, out, err, peak, seconds = measured("check", path)
    within_bounds(code, out, err, peak, seconds, 2)
    assert "config.json" in err or "damaged .keras archive" in err


def test_object_graph_chain_of_50000_nodes(tmp_path):
    """A TF2 object graph that is one long chain, every node holding a variable: paths stay bounded."""
    graph = protos.TrackableObjectGraph()
    count = 50_000
    for node_id in range(count):
        node = graph.nodes.add()
        if node_id + 1 < count:
            node.children.add(node_id=node_id + 1, local_name="layer")
        node.attributes.add(name="VARIABLE_VALUE", checkpoint_key=f"v{node_id}/.ATTRIBUTES/VARIABLE_VALUE")
    raw, crc = encode_string_tensor([graph.SerializeToString()])
    entry = protos.BundleEntryProto(dtype=dtypes.BY_NAME["string"].code, size=len(raw), crc32c=crc)
    prefix = _bundle(tmp_path / "ckpt", {OBJECT_GRAPH_KEY.encode(): entry.SerializeToString()}, raw)
    code, out, err, peak, seconds = measured("check", prefix)
    within_bounds(code, out, err, peak, seconds, 1)
    assert "path longer than" in out


# ---- files that are not regular files ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["data-shard", "state-file", "keras", "weights-h5", "index"])
def test_fifo_is_refused_at_once(tmp_path, where):
    prefix = copy_checkpoint(FIXTURE_BUNDLES["finetune_full"], tmp_path)
    given: Path = prefix
    if where == "data-shard":
        shard = Path(f"{prefix}.data-00000-of-00001")
        shard.unlink()
        os.mkfifo(shard)
    elif where == "index":
        Path(f"{prefix}.index").unlink()
        os.mkfifo(f"{prefix}.index")
    elif where == "state-file":
        os.mkfifo(tmp_path / "checkpoint")
        given = tmp_path
    else:
        given = tmp_path / ("model.keras" if where == "keras" else "model.weights.h5")
        os.mkfifo(given)
    code, out, err, peak, seconds = measured("check", given)
    within_bounds(code, out, err, peak, seconds, 2)
    assert "FIFO" in err and seconds < 10


@pytest.mark.parametrize("how", ["no-permission", "directory"])
def test_shard_that_cannot_be_opened_is_not_missing(tmp_path, how):
    """Only a shard that is absent is a missing-shard finding; one that is there but unreadable is exit 2."""
    prefix = copy_checkpoint(FIXTURE_BUNDLES["finetune_full"], tmp_path)
    shard = Path(f"{prefix}.data-00000-of-00001")
    if how == "no-permission":
        if os.geteuid() == 0:
            pytest.skip("root reads files whatever their permissions")
        shard.chmod(0)
    else:
        shard.unlink()
        shard.mkdir()
    code, out, err, peak, seconds = measured("check", prefix)
    within_bounds(code, out, err, peak, seconds, 2)
    assert ("Permission denied" if how == "no-permission" else "is a directory") in err
    assert "missing" not in out + err


# ---- many shards, few descriptors ---------------------------------------------------------------


def test_1100_shards_under_a_256_descriptor_limit(tmp_path):
    from synthetic import write_synthetic

    prefix = tmp_path / "model.ckpt"
    write_synthetic(prefix, total_bytes=1_100 * 256, tensors=1_100 * 4, shards=1_100)
    code, out, err, peak, seconds = measured("check", prefix, "--format", "json", open_files=256)
    within_bounds(code, out, err, peak, seconds, 0)
    assert '"findings": []' in out


# ---- stand-ins for bundle files -------------------------------------------------------------------

LFS = "version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 123456\n"
HTML = "<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>\n"


@pytest.mark.parametrize("member", ["index", "data-00000-of-00001"])
@pytest.mark.parametrize(("text", "message"), [(LFS, "Git LFS pointer"), (HTML, "HTML page")])
def test_lfs_pointer_or_html_page_as_bundle_file(tmp_path, member, text, message):
    prefix = copy_checkpoint(FIXTURE_BUNDLES["finetune_full"], tmp_path)
    Path(f"{prefix}.{member}").write_text(text)
    code, out, err, peak, seconds = measured("check", prefix)
    within_bounds(code, out, err, peak, seconds, 2)
    assert message in err and f".{member}" in err


# ---- the stall watchdog beats per slab, not per dataset -----------------------------------------------


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "model.weights.h5"
    shutil.copy(KERAS / "healthy" / "model.weights.h5", path)
    with h5py.File(path, "r+") as file:
        values = np.full((4096, 4096), 0.5, dtype="<f4")  # 64 MiB, in eight chunks
        file.create_dataset("layers/extra/vars/0", data=values, chunks=(512, 4096))
    return path


def test_scan_reports_progress_per_slab_of_one_dataset(big_dataset):
    """The progress callback is the watchdog's heartbeat: it must come many times within one big dataset."""
    from ckptdoctor.formats import open_checkpoint
    from ckptdoctor.formats.base import SCAN_CHUNK

    reader, _ = open_checkpoint(big_dataset)
    calls: list[int] = []
    try:
        reader.scan(lambda done, total: calls.append(done))
    finally:
        reader.close()
    assert len(calls) >= (64 << 20) // SCAN_CHUNK
    assert calls == sorted(calls)


def test_large_healthy_dataset_is_not_killed_by_the_watchdog(big_dataset):
    code, out, err, _, _ = measured("check", big_dataset, env={"CKPTDOCTOR_STALL_SECONDS": "0.5"})
    assert code == 0, out + err
