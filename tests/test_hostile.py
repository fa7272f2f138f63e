"""Hostile and damaged input, tried as a user would: always a finding or a one-line error, never a traceback."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from conftest import FIXTURE_BUNDLES, KERAS, copy_checkpoint, run_cli, write_index

FULL = FIXTURE_BUNDLES["finetune_full"]
DATA = "data-00000-of-00001"


def one_line_error(result, *fragments) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    for fragment in fragments:
        assert fragment in line


def findings(result, *expected) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for fragment in expected:
        assert fragment in result.stdout


@pytest.fixture
def copy(tmp_path):
    return copy_checkpoint(FULL, tmp_path / "ckpt")


def test_flipped_tensor_byte(copy):
    data = Path(f"{copy}.{DATA}")
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0x10
    data.write_bytes(bytes(raw))
    findings(run_cli("check", copy), "INT001 crc-mismatch")


def test_data_shard_cut_in_half(copy):
    data = Path(f"{copy}.{DATA}")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    findings(run_cli("check", copy), "INT003 tensor-out-of-bounds")


def test_index_cut_to_20_bytes(copy):
    index = Path(f"{copy}.index")
    index.write_bytes(index.read_bytes()[:20])
    one_line_error(run_cli("check", copy), "model.ckpt-20.index", "too short")


def test_damaged_index_block_is_a_finding(copy):
    index = Path(f"{copy}.index")
    raw = bytearray(index.read_bytes())
    raw[40] ^= 0x01  # inside the one data block; the index block and footer stay sound
    index.write_bytes(bytes(raw))
    findings(run_cli("check", copy), "INT007 index-corrupt", "fails its checksum")


def test_deleted_data_shard_is_named(copy):
    Path(f"{copy}.{DATA}").unlink()
    findings(run_cli("check", copy), "INT002 missing-data-shard", f"model.ckpt-20.{DATA}")


def test_data_file_given_instead_of_prefix(copy):
    result = run_cli("check", f"{copy}.{DATA}")
    assert result.returncode == 0
    assert "reading checkpoint model.ckpt-20" in result.stdout


def test_git_lfs_pointer(tmp_path):
    pointer = tmp_path / "model.weights.h5"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 123\n")
    one_line_error(run_cli("check", pointer), "Git LFS pointer", "git lfs pull")


def test_random_bytes(tmp_path):
    junk = tmp_path / "model.weights.h5"
    junk.write_bytes(os.urandom(4096))
    one_line_error(run_cli("check", junk), "not a recognised checkpoint format")


def test_keras_archive_cut_to_a_third(tmp_path):
    cut = tmp_path / "model.keras"
    data = (KERAS / "healthy" / "model.keras").read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    one_line_error(run_cli("check", cut), "damaged .keras archive", "truncated")


def test_keras_archive_with_a_flipped_byte_is_a_finding(tmp_path):
    damaged = tmp_path / "model.keras"
    data = bytearray((KERAS / "healthy" / "model.keras").read_bytes())
    with zipfile.ZipFile(KERAS / "healthy" / "model.keras") as archive:
        info = archive.getinfo("model.weights.h5")
    data[info.header_offset + 200 + info.file_size // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    findings(run_cli("check", damaged), "INT009 archive-corrupt")


def test_truncated_hdf5_names_the_lengths(tmp_path):
    cut = tmp_path / "model.weights.h5"
    data = (KERAS / "healthy" / "model.weights.h5").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    one_line_error(run_cli("check", cut), "truncated", f"{len(data) // 2} bytes of the {len(data)}")


def test_missing_path(tmp_path):
    one_line_error(run_cli("check", tmp_path / "nothing-here"), "no such file")


def test_several_paths_one_unreadable_exit_2_but_others_reported(tmp_path):
    result = run_cli("check", FULL, tmp_path / "nothing-here", "--format", "json")
    assert result.returncode == 2
    assert '"format": "tf1-name-based"' in result.stdout
    assert "nothing-here" in result.stderr


CRASHERS = sorted(p for p in (Path(__file__).parent / "crashers").iterdir() if p.is_file() and p.suffix != ".md")


def test_old_crashers_stay_fixed(tmp_path):
    """Inputs that once crashed or hung a reader (saved by scripts/fuzz.py as `<seed>-<hash>`): each must now
    give a report or a one-line error, run as the CLI so that a libhdf5 loop meets the stall watchdog."""
    from fuzzing import cli_outcomes, write_case

    if not CRASHERS:
        pytest.skip("no crashers saved")
    paths = []
    for number, crasher in enumerate(CRASHERS):
        directory = tmp_path / str(number)
        directory.mkdir()
        paths.append(write_case(directory, crasher.name.rsplit("-", 1)[0], crasher.read_bytes()))
    outcomes = cli_outcomes(paths, stall_seconds=5)
    assert {path: result for path, result in outcomes.items() if result != "ok"} == {}


def _index_with(tmp_path, header: bytes, entries: dict[bytes, bytes]) -> Path:
    return write_index(tmp_path / "crafted", [(b"", header), *sorted(entries.items())])


def test_shard_count_cap(tmp_path):
    from ckptdoctor.formats import protos

    prefix = _index_with(tmp_path, protos.BundleHeaderProto(num_shards=10**6).SerializeToString(), {})
    one_line_error(run_cli("check", prefix), "header claims 1000000 shards")


def test_rank_cap_and_huge_string_count_are_findings(tmp_path):
    from ckptdoctor.formats import protos

    deep = protos.BundleEntryProto(dtype=1, size=4)
    for _ in range(100):
        deep.shape.dim.add(size=1)
    strings = protos.BundleEntryProto(dtype=7, size=16)
    strings.shape.dim.add(size=10**15)  # a million billion strings in 16 bytes
    header = protos.BundleHeaderProto(num_shards=1).SerializeToString()
    prefix = _index_with(tmp_path, header, {b"deep": deep.SerializeToString(), b"strings": strings.SerializeToString()})
    result = run_cli("check", prefix)
    findings(result, "INT007 index-corrupt", "invalid shape")
    assert "crc-mismatch" in result.stdout  # the string tensor is checked, quickly, and fails its checksum


def test_block_size_cap(tmp_path):
    import struct

    from ckptdoctor.formats.sstable import MAGIC, encode_varint

    index = tmp_path / "huge.index"
    handles = (encode_varint(0) + encode_varint(0) + encode_varint(0) + encode_varint(1 << 40)).ljust(40, b"\0")
    index.write_bytes(b"\0" * 100 + handles + struct.pack("<II", MAGIC & 0xFFFFFFFF, MAGIC >> 32))
    one_line_error(run_cli("check", tmp_path / "huge"), "over the block size cap")
