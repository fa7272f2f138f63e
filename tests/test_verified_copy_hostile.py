"""Hostile and careless cases for the verified copy: the writer's own check of the bytes it copied must never
stand in for bytes that are no longer the ones it checked; the switch interval must be left as found; the
entry encoder must not crash on an entry that protobuf re-serialises."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import FIXTURE_BUNDLES, copy_checkpoint, run_cli, write_index

from ckptdoctor import dtypes
from ckptdoctor.formats import protos
from ckptdoctor.formats.tf_bundle import BundleEntry, BundleReader
from ckptdoctor.gate import gate
from ckptdoctor.patch import patch
from ckptdoctor.writer.bundle import _placed

TRAINABLE = FIXTURE_BUNDLES["finetune_trainable"]
FULL = FIXTURE_BUNDLES["finetune_full"]
NAN_F32 = b"\x00\x00\xc0\x7f"


def _findings(path) -> set[tuple[str, str]]:
    return {(f.code, f.subject) for report in gate([path]).reports for f in report.findings}


def _patched_float(tmp_path: Path):
    """A patch's result, its data file, and a copied float32 tensor in it."""
    out = tmp_path / "out" / "model.ckpt-20"
    result = patch(TRAINABLE, FULL, out)
    reader = BundleReader(str(out))
    entry = next(e for e in reader.entries.values() if e.dtype.name == "float32" and e.size >= 4)
    reader.close()
    return result, Path(f"{out}.data-00000-of-00001"), entry


def test_bytes_changed_in_place_after_the_write_are_found_through_the_returned_resolved(tmp_path):
    result, data, entry = _patched_float(tmp_path)
    with open(data, "r+b") as file:  # same inode, same size: only the bytes differ
        file.seek(entry.offset)
        file.write(NAN_F32)
    assert ("INT001", entry.name) in _findings(result.resolved.location)  # read from disk: found
    assert ("INT001", entry.name) in _findings(result.resolved)  # through the Resolved patch returned


def test_a_replacement_file_that_reuses_the_inode_is_not_vouched_for(tmp_path):
    result, data, entry = _patched_float(tmp_path)
    inode = data.stat().st_ino
    damaged = bytearray(data.read_bytes())
    damaged[entry.offset : entry.offset + 4] = NAN_F32
    data.unlink()
    spare = []
    for number in range(64):  # ext4 hands a freed inode out again at once; tmpfs never does
        candidate = data.parent / f"spare{number}"
        candidate.write_bytes(b"")
        if candidate.stat().st_ino == inode:
            candidate.write_bytes(bytes(damaged))
            os.replace(candidate, data)
            break
        spare.append(candidate)
    else:
        pytest.skip(f"this filesystem did not reuse the inode {inode}: {[p.stat().st_ino for p in spare][:8]}")
    assert data.stat().st_ino == inode
    assert ("INT001", entry.name) in _findings(result.resolved)


@pytest.mark.parametrize("field", ["dtype", "size", "shard_id", "offset"])
def test_placed_matches_protobuf_for_negative_fields(field):
    proto = protos.BundleEntryProto(dtype=1, offset=8, size=4, crc32c=5)
    proto.shape.dim.add(size=1)
    setattr(proto, field, -4)
    entry = BundleEntry(
        b"w", "w", dtypes.from_code(proto.dtype), (1,), proto.shard_id, proto.offset, proto.size, 5, 0,
        proto.SerializeToString(),
    )  # fmt: skip
    expected = protos.BundleEntryProto.FromString(entry.proto)
    expected.shard_id, expected.offset = 0, 64
    assert _placed(entry, 0, 64) == expected.SerializeToString()


@pytest.mark.parametrize(("field", "code"), [("dtype", "INT001"), ("size", "INT004")])
def test_patch_of_a_target_with_a_negative_field_reports_it_not_an_internal_error(tmp_path, field, code):
    target = copy_checkpoint(TRAINABLE, tmp_path / "target")
    reader = BundleReader(str(target))
    index = {e.key: e.proto for e in reader.entries.values()}
    reader.close()
    data = Path(f"{target}.data-00000-of-00001").read_bytes()
    hostile = protos.BundleEntryProto(dtype=1, offset=8, size=4, crc32c=1)
    hostile.shape.dim.add(size=1)
    setattr(hostile, field, -1)
    index[b"zz_hostile"] = hostile.SerializeToString()
    header = protos.BundleHeaderProto(num_shards=1)
    header.version.producer = 1
    write_index(target, [(b"", header.SerializeToString()), *sorted(index.items())], data)
    done = run_cli("patch", target, "--from", FULL, "--out", tmp_path / "out" / "model.ckpt-20")
    assert "unexpected" not in done.stderr, done.stderr
    if field == "size":  # no bytes to copy: refused in one line, nothing written
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "zz_hostile" in done.stderr
        assert "negative offset or size" in done.stderr and not (tmp_path / "out" / "model.ckpt-20.index").exists()
    else:  # copied as stored, and the re-check says what is wrong with it
        assert done.returncode == 1 and code in done.stdout and "zz_hostile" in done.stdout


@pytest.mark.parametrize("offset, size", [(-8, 4), (0, -4)], ids=["negative-offset", "negative-size"])
def test_a_negative_offset_or_size_is_a_finding_not_an_internal_error(tmp_path, offset, size):
    from conftest import bundle_header, entry_proto

    prefix = write_index(
        tmp_path / "model.ckpt",
        [bundle_header(), (b"s", entry_proto((), size=size, offset=offset, dtype=7))],  # 7: string
    )
    result = run_cli("check", prefix, "--format", "json")
    assert result.returncode == 1, result.stderr
    assert "unexpected" not in result.stderr
    codes = {finding["code"] for finding in json.loads(result.stdout)["findings"]}
    assert codes & {"INT004", "INT001", "INT002", "INT003"}, codes
