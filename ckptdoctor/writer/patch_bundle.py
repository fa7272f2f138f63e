"""Write a patched TF bundle: every target tensor plus the added statistics, and for TF2 the graph nodes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ckptdoctor import dtypes
from ckptdoctor.analysis.checkpoint import Checkpoint
from ckptdoctor.formats import protos
from ckptdoctor.formats.crc import crc32c, mask
from ckptdoctor.formats.object_graph import ObjectGraph
from ckptdoctor.formats.ordered_code import slice_key
from ckptdoctor.formats.tf_bundle import (
    OBJECT_GRAPH_KEY,
    BundleEntry,
    BundleReader,
    data_file_name,
    encode_string_tensor,
    slice_extents,
)
from ckptdoctor.model import CheckpointError
from ckptdoctor.names import encode_name
from ckptdoctor.writer.bundle import BundleWriter

ATTRIBUTE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def _with_graph_nodes(graph: ObjectGraph, additions, full_names: dict[str, str]) -> bytes:
    """The object graph with one node per added variable, linked as a child of its layer's node.

    Matching on restore goes through these links, not key names: a tensor without its node is ignored,
    and a node nobody links to makes TF's assert_consumed fail with a KeyError (FORMATS.md §10)."""
    proto = protos.TrackableObjectGraph()
    proto.CopyFrom(graph.proto)
    for addition in additions:
        parent = graph.nodes_by_path.get(addition.layer)
        if parent is None:
            raise CheckpointError(f"layer object {addition.layer} is not in the target's object graph")
        node = proto.nodes.add()
        node.attributes.add(name="VARIABLE_VALUE", full_name=full_names[addition.key], checkpoint_key=addition.key)
        node.has_checkpoint_values.value = True
        proto.nodes[parent].children.add(node_id=len(proto.nodes) - 1, local_name=addition.statistic)
    return proto.SerializeToString()


@dataclasses.dataclass(frozen=True)
class BundlePlan:
    """Every output tensor: copied as stored from a bundle, or given as (dtype code, shape, bytes, masked CRC)."""

    copies: dict[bytes, tuple[BundleReader, BundleEntry]]
    encoded: dict[bytes, tuple[int, tuple[int, ...], bytes, int]]
    additions: list
    total: int  # bytes to write, for progress


def _with_slices(reader: BundleReader, entry: BundleEntry, key: bytes) -> dict[bytes, tuple[BundleReader, BundleEntry]]:
    """A tensor to copy under `key`; a partitioned one with each slice, re-keyed under its new name."""
    copies = {key: (reader, entry)}
    for extents in slice_extents(entry):
        part = reader.entries.get(slice_key(entry.key, extents))
        if part is None:
            raise CheckpointError(f"{reader.location}: slice {extents} of partitioned {entry.name} is missing")
        copies[slice_key(key, extents)] = (reader, part)
    return copies


def prepare(target: Checkpoint, donor: Checkpoint, additions) -> BundlePlan:
    """Everything the patched bundle will hold, decided and checked before a byte is written."""
    reader = target.reader
    assert isinstance(reader, BundleReader)
    graph = reader.object_graph
    suffix = ATTRIBUTE_SUFFIX if graph is not None else ""
    additions = [dataclasses.replace(a, key=f"{a.layer}/{a.statistic}{suffix}") for a in additions]
    donor_names = {v.name: v.full_name for v in donor.variables}
    full_names = {a.key: donor_names.get(a.donor_key) or f"{a.layer}/{a.statistic}" for a in additions}

    copies = {entry.key: (reader, entry) for entry in reader.entries.values()}
    encoded: dict[bytes, tuple[int, tuple[int, ...], bytes, int]] = {}
    for addition in additions:
        key = encode_name(addition.key)
        if isinstance(donor.reader, BundleReader):
            copies.update(_with_slices(donor.reader, donor.reader.entry(addition.donor_key), key))
        else:
            values = donor.reader.read(addition.donor_key)
            raw = values.astype(values.dtype.newbyteorder("<")).tobytes()
            encoded[key] = (dtypes.BY_NAME[values.dtype.name].code, tuple(values.shape), raw, mask(crc32c(raw)))
    if graph is not None and additions:
        raw, crc = encode_string_tensor([_with_graph_nodes(graph, additions, full_names)])
        copies.pop(OBJECT_GRAPH_KEY.encode(), None)
        encoded[OBJECT_GRAPH_KEY.encode()] = (dtypes.BY_NAME["string"].code, (), raw, crc)
    total = sum(entry.size for _, entry in copies.values()) + sum(len(item[2]) for item in encoded.values())
    return BundlePlan(copies, encoded, additions, total)


def output_files(out: str) -> list[str]:
    """The files `write` creates at the prefix `out`, besides the directory's state file."""
    return [out + ".index", data_file_name(out, 0, 1)]


def write(plan: BundlePlan, out: str, previous: list[Path], progress=None) -> tuple[str, ...]:
    """Stream the planned tensors into a new bundle at `out`; returns the files written."""
    writer = BundleWriter(out)
    try:
        done = 0
        for key in sorted(plan.copies.keys() | plan.encoded.keys()):
            if key in plan.encoded:
                writer.add(key, *plan.encoded[key])
            else:
                writer.copy(*plan.copies[key], key=key)
            done += writer.last_size
            if progress:
                progress(done, plan.total)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    for stale in previous:  # shards of an older checkpoint at this prefix with another shard count
        if stale.name not in (Path(writer.data_path).name, Path(writer.index_path).name):
            stale.unlink(missing_ok=True)
    return (writer.index_path, writer.data_path)
