"""A bundle writer checks the bytes it copies as it copies them; the re-check of its output takes those
results instead of reading the bytes again, but only for the very file and ranges it checked. The index
entries it writes without protobuf are byte for byte what protobuf writes."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_BUNDLES, cli_env, copy_checkpoint, file_bytes

from ckptdoctor import dtypes
from ckptdoctor.formats import protos
from ckptdoctor.formats.crc import crc32c, mask
from ckptdoctor.formats.tf_bundle import BundleEntry, BundleReader, _canonical_entry, encode_entry, encode_header
from ckptdoctor.gate import gate
from ckptdoctor.patch import patch
from ckptdoctor.writer.bundle import _placed

TRAINABLE = FIXTURE_BUNDLES["finetune_trainable"]
FULL = FIXTURE_BUNDLES["finetune_full"]


def _protobuf_entry(dtype: int, shape: tuple[int, ...], shard: int, offset: int, size: int, crc: int) -> bytes:
    proto = protos.BundleEntryProto(dtype=dtype, shard_id=shard, offset=offset, size=size, crc32c=crc)
    proto.shape.SetInParent()
    for dim in shape:
        proto.shape.dim.add(size=dim)
    return proto.SerializeToString()


def test_entries_and_header_encode_as_protobuf_does():
    rng = random.Random(7)
    cases = [(1, (), 0, 0, 4, 0), (1, (0,), 0, 0, 0, 0), (19, (3, 0, 5), 0, 2**40, 0, 0xFFFFFFFF)]
    for _ in range(500):
        shape = tuple(rng.choice([0, 1, 127, 128, 300, 2**33]) for _ in range(rng.randrange(6)))
        cases.append(
            (
                rng.choice([0, 1, 2, 3, 9, 14, 19, 127, 128]),
                shape,
                rng.choice([0, 1, 5, 300]),
                rng.choice([0, 1, 127, 128, 2**31, 2**62]),
                rng.choice([0, 4, 2**20, 2**35]),
                rng.choice([0, 1, 0x80000000, rng.getrandbits(32)]),
            )
        )
    for case in cases:
        encoded = encode_entry(*case)
        assert encoded == _protobuf_entry(*case), case
        assert _canonical_entry(encoded) == (*case, 0)  # and the reader's shortcut reads it back
    for shards in (0, 1, 2, 300):
        header = protos.BundleHeaderProto(num_shards=shards)
        header.version.producer = 1
        assert encode_header(shards) == header.SerializeToString()


def test_an_entry_with_more_than_the_plain_fields_keeps_them_when_moved():
    proto = protos.BundleEntryProto(dtype=1, offset=8, size=4, crc32c=5)
    proto.shape.dim.add(size=1, name="batch")  # a dimension name: not the layout TF writes
    entry = BundleEntry(b"w", "w", dtypes.from_code(1), (1,), 0, 8, 4, 5, 0, proto.SerializeToString())
    moved = protos.BundleEntryProto.FromString(_placed(entry, 0, 64))
    assert moved.offset == 64 and moved.shape.dim[0].name == "batch" and moved.crc32c == 5


def _findings(path) -> set[tuple[str, str]]:
    verdict = gate([path])
    return {(f.code, f.subject) for report in verdict.reports for f in report.findings}


def test_the_recheck_takes_the_writers_results_for_exactly_the_bytes_it_wrote(tmp_path):
    result = patch(TRAINABLE, FULL, tmp_path / "out" / "model.ckpt-20")
    verified = result.resolved.verified
    reader = BundleReader(str(tmp_path / "out" / "model.ckpt-20"))
    copied = [e for e in reader.entries.values() if e.dtype.itemsize and not e.num_slices]
    checked = [e for e in copied if reader._verified(e, verified) is not None]
    # Every numeric tensor was copied as stored (from the target, the statistics from the donor) and checked.
    assert checked == copied and len(copied) > len(result.added)
    for entry in checked:
        crc, bad = reader._verified(entry, verified)
        assert mask(crc) == entry.crc32c and bad == 0
    reader.close()
    plain = result.resolved._replace(verified=None)
    assert _findings(result.resolved) == _findings(plain)

    # The same name, another file (a copy with one byte changed): nothing the writer checked applies to it.
    data = tmp_path / "out" / "model.ckpt-20.data-00000-of-00001"
    damaged = bytearray(data.read_bytes())
    damaged[checked[0].offset] ^= 0xFF
    data.unlink()
    data.write_bytes(bytes(damaged))
    assert ("INT001", checked[0].name) in {(code, subject) for code, subject in _findings(result.resolved)}


def _rewrite_tensor(prefix: Path, name: str, values: np.ndarray, keep_crc: bool) -> None:
    """Overwrite one tensor's bytes in place; its index CRC stays (damage) or is made to fit (a NaN TF wrote)."""
    reader = BundleReader(str(prefix))
    entry = reader.entries[name.encode()]
    reader.close()
    raw = values.astype("<f4").tobytes()
    assert len(raw) == entry.size
    data = Path(f"{prefix}.data-00000-of-00001")
    content = bytearray(data.read_bytes())
    content[entry.offset : entry.offset + entry.size] = raw
    data.write_bytes(bytes(content))
    if not keep_crc:
        from conftest import write_index

        index = {e.key: e.proto for e in BundleReader(str(prefix)).entries.values()}
        fixed = protos.BundleEntryProto.FromString(index[entry.key])
        fixed.crc32c = mask(crc32c(raw))
        index[entry.key] = fixed.SerializeToString()
        header = protos.BundleHeaderProto(num_shards=1)
        header.version.producer = 1
        write_index(prefix, [(b"", header.SerializeToString()), *sorted(index.items())], bytes(content))


@pytest.mark.parametrize("keep_crc", [True, False], ids=["bytes-damaged", "nan-stored"])
def test_what_was_wrong_in_the_copied_bytes_is_found_by_the_recheck(tmp_path, keep_crc):
    target = copy_checkpoint(TRAINABLE, tmp_path / "target")
    reader = BundleReader(str(target))
    weight = next(e for e in reader.entries.values() if e.name.endswith("weights") and e.dtype.name == "float32")
    reader.close()
    values = np.ones(weight.size // 4, dtype=np.float32)
    values[1] = np.nan
    _rewrite_tensor(target, weight.name, values, keep_crc)
    before = file_bytes(target)
    result = patch(target, FULL, tmp_path / "out" / "model.ckpt-20")
    assert result.resolved.verified is not None and result.resolved.verified.ranges
    expected = ("INT001", weight.name) if keep_crc else ("VAL001", weight.name)
    assert expected in _findings(result.resolved)
    assert file_bytes(target) == before
    shutil.rmtree(tmp_path / "out")


def test_a_verifier_that_cannot_import_numpy_leaves_the_ranges_to_the_recheck(tmp_path):
    """numpy failing to load on the verifier's thread (a memory limit) is no traceback: the re-check reads the
    ranges itself, and the command says what the normal run says."""
    command = "from ckptdoctor.__main__ import main\nsys.argv = ['ckptdoctor', *sys.argv[1:]]\nmain()\n"
    refusing = (
        "import builtins, sys, threading\n"
        "real = builtins.__import__\n"
        "def refuse(name, *args, **kwargs):\n"
        "    if name == 'numpy' and threading.current_thread().name == 'ckptdoctor-verify':\n"
        "        raise MemoryError('simulated')\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = refuse\n"
    )
    runs = {}
    for name, code in (("refused", refusing + command), ("normal", "import sys\n" + command)):
        argv = ["patch", str(TRAINABLE), "--from", str(FULL), "--out", str(tmp_path / name / "model.ckpt-1")]
        runs[name] = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=cli_env())
    assert runs["refused"].returncode == runs["normal"].returncode == 0, runs["refused"].stderr
    assert runs["refused"].stderr == runs["normal"].stderr == ""
    assert runs["refused"].stdout.replace("refused", "normal") == runs["normal"].stdout
