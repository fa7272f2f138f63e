"""The table layer: checksums, blocks, Snappy, and a builder that reproduces TensorFlow's bytes."""

from __future__ import annotations

import io

import pytest
from conftest import FIXTURE_BUNDLES, realworld

from ckptdoctor.formats.bytesource import LocalFile
from ckptdoctor.formats.crc import crc32c, mask, unmask
from ckptdoctor.formats.sstable import (
    TableBuilder,
    TableError,
    TableReader,
    _decode_handle,
    block_entries,
    short_successor,
    shortest_separator,
)


def test_crc32c_check_value_and_mask():
    assert crc32c(b"123456789") == 0xE3069283
    assert mask(0) == 0xA282EAD8
    for value in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert unmask(mask(value)) == value


def test_separators_follow_leveldb():
    assert shortest_separator(b"abcdef", b"abzz") == b"abd"
    assert shortest_separator(b"abc", b"abd") == b"abc"  # +1 would not stay below the limit
    assert shortest_separator(b"ab", b"abc") == b"ab"  # a prefix is kept as it is
    assert short_successor(b"strvar") == b"t"
    assert short_successor("ünïcode/ключ".encode()) == b"\xc4"
    assert short_successor(b"\xff\xff") == b"\xff\xff"


@pytest.mark.parametrize("name", ["finetune_full", "finetune_trainable", "partitioned", "sharded"])
def test_builder_rewrites_tf_index_byte_for_byte(name):
    index = FIXTURE_BUNDLES[name].with_name(FIXTURE_BUNDLES[name].name + ".index")
    with LocalFile(index) as source:
        records = list(TableReader(source))
    out = io.BytesIO()
    builder = TableBuilder(out)
    for key, value in records:
        builder.add(key, value)
    builder.finish()
    assert out.getvalue() == index.read_bytes()


def test_builder_splits_blocks_like_tf():
    # 3000 keys with 80-byte values overflow one 256 KiB block; the result must read back intact.
    out = io.BytesIO()
    builder = TableBuilder(out)
    records = [(f"var/{i:05d}".encode(), bytes([i % 251]) * 80) for i in range(4000)]
    for key, value in records:
        builder.add(key, value)
    builder.finish()

    class Memory:
        name = "memory"

        def size(self):
            return len(out.getvalue())

        def read(self, offset, length):
            return out.getvalue()[offset : offset + length]

    reader = TableReader(Memory())
    assert list(reader) == records
    assert len(list(block_entries(reader.index))) == 2  # two data blocks, as TF would write


def test_builder_refuses_unsorted_keys():
    builder = TableBuilder(io.BytesIO())
    builder.add(b"b", b"")
    with pytest.raises(ValueError, match="strictly increasing"):
        builder.add(b"a", b"")


def test_snappy_block_in_real_savedmodel():
    index = realworld("serving_sm_half_plus_two_tf2/variables/variables.index")
    raw = index.read_bytes()
    with LocalFile(index) as source:
        reader = TableReader(source)
        keys = [key for key, _ in reader]
        # The first data block's trailer type byte is 1 (Snappy) in this file: pin that fact.
        _, handle_bytes = next(block_entries(reader.index))
        handle, _ = _decode_handle(handle_bytes, 0)
        assert raw[handle.offset + handle.size] == 1
    assert keys[:2] == [b"", b"_CHECKPOINTABLE_OBJECT_GRAPH"]


def test_flipped_index_byte_is_a_checksum_error(tmp_path):
    index = FIXTURE_BUNDLES["finetune_full"].with_name("model.ckpt-20.index")
    damaged = bytearray(index.read_bytes())
    damaged[10] ^= 0x40
    path = tmp_path / "x.index"
    path.write_bytes(bytes(damaged))
    with LocalFile(path) as source, pytest.raises(TableError, match="fails its checksum"):
        list(TableReader(source))


@pytest.mark.parametrize("size", [0, 20, 47])
def test_short_index_is_a_clear_error(tmp_path, size):
    path = tmp_path / "x.index"
    path.write_bytes(b"\0" * size)
    with LocalFile(path) as source, pytest.raises(TableError, match="too short"):
        TableReader(source)
