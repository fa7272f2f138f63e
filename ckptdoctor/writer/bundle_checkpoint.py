"""Edited TF bundles: every source tensor (copied as stored) with the edits applied, and for TF2 the graph nodes."""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from pathlib import Path

from ckptdoctor import TYPE_CHECKING, dtypes
from ckptdoctor.errors import OutputError
from ckptdoctor.formats import protos
from ckptdoctor.formats.crc import crc32c, mask
from ckptdoctor.formats.object_keys import ATTRIBUTE_SUFFIX, OBJECT_GRAPH_KEY
from ckptdoctor.formats.ordered_code import slice_key
from ckptdoctor.formats.tf_bundle import (
    BundleEntry,
    data_file_name,
    encode_string_tensor,
    slice_extents,
)
from ckptdoctor.model import CheckpointError, Storage
from ckptdoctor.names import encode_name
from ckptdoctor.typed import NamedTuple
from ckptdoctor.writer.base import (
    Edits,
    NewTensor,
    Placed,
    Progress,
    Stored,
    TensorSource,
    UnsupportedEdit,
    Written,
    check_drops_and_renames,
    check_replacements,
    refuse_unsupported,
    values_of,
)
from ckptdoctor.writer.bundle import BundleSource, BundleWriter

if TYPE_CHECKING:
    from typing import Any, TypeGuard

    import numpy as np

    from ckptdoctor.analysis.checkpoint import Checkpoint
    from ckptdoctor.formats.object_graph import ObjectGraph


Encoded = tuple[int, tuple[int, ...], bytes, int]  # dtype code, shape, stored bytes, masked CRC


def _with_graph_nodes(location: str, graph: ObjectGraph, added: Sequence[tuple[NewTensor, str]]) -> bytes:
    """The object graph with one node per added variable, linked as a child of its layer's node.

    Matching on restore goes through these links, not key names: a tensor without its node is ignored,
    and a node nobody links to makes TF's assert_consumed fail with a KeyError (shared/docs/FORMATS.md §10)."""
    proto = protos.TrackableObjectGraph()
    proto.CopyFrom(graph.proto)
    for tensor, key in added:
        parent = graph.nodes_by_path.get(tensor.layer)
        if parent is None:
            raise OutputError(
                f"{location}: layer object {tensor.layer} is not in the object graph, so a "
                "variable cannot be added under it"
            )
        node = proto.nodes.add()
        full_name = tensor.full_name or f"{tensor.layer}/{tensor.variable}"
        node.attributes.add(name="VARIABLE_VALUE", full_name=full_name, checkpoint_key=key)
        node.has_checkpoint_values.value = True
        proto.nodes[parent].children.add(node_id=len(proto.nodes) - 1, local_name=tensor.variable)
    return proto.SerializeToString()


def _graph_without(graph: ObjectGraph, dropped: frozenset[str], location: str) -> bytes:
    """The object graph without the objects whose every value is dropped, nor what only they lead to.

    A node that still holds attributes must be matched on restore (assert_consumed), so dropping the
    optimizer means removing its node, every variable under it, each slot variable and each link to them;
    node ids are renumbered and `slot_variables` that name a removed node go. A node left holding a value
    that is not dropped, or whose values are dropped only in part, makes the edit refuse."""
    proto: Any = graph.proto  # a TrackableObjectGraph (protos are built at run time, typed Any)
    count = len(proto.nodes)
    children = [[c.node_id for c in node.children if 0 <= c.node_id < count] for node in proto.nodes]
    parents: dict[int, list[int]] = {}
    for node_id, linked in enumerate(children):
        for child in linked:
            parents.setdefault(child, []).append(node_id)
    removed: set[int] = set()
    for node_id, node in enumerate(proto.nodes):
        keys = [attribute.checkpoint_key for attribute in node.attributes]
        gone = [key for key in keys if key in dropped]
        if gone and len(gone) < len(keys):
            raise UnsupportedEdit(f"{location}: {gone[0]} cannot be dropped without the other values of its object")
        if gone:
            removed.add(node_id)
    # Containers the drop emptied (the optimizer, its variable lists) go too: attribute-less nodes other
    # than the root whose every child is removed.
    pending = [parent for node_id in removed for parent in parents.get(node_id, [])]
    while pending:
        node_id = pending.pop()
        node = proto.nodes[node_id]
        if node_id == 0 or node_id in removed or node.attributes or not children[node_id]:
            continue
        if all(child in removed for child in children[node_id]):
            removed.add(node_id)
            pending.extend(parents.get(node_id, []))
    before, after = _reachable(proto, set()), _reachable(proto, removed)
    for node_id in sorted(before - after - removed):
        keys = [a.checkpoint_key for a in proto.nodes[node_id].attributes if a.checkpoint_key not in dropped]
        if keys:
            raise OutputError(
                f"{location}: dropping these tensors leaves {keys[0]} outside the object graph; drop it too"
            )
        removed.add(node_id)
    kept = [node_id for node_id in range(count) if node_id not in removed]
    new_id = {old: new for new, old in enumerate(kept)}
    out = protos.TrackableObjectGraph()
    for old in kept:
        node = out.nodes.add()
        node.CopyFrom(proto.nodes[old])
        del node.children[:]
        del node.slot_variables[:]
        for child in proto.nodes[old].children:
            if child.node_id in new_id:
                node.children.add(node_id=new_id[child.node_id], local_name=child.local_name)
        for slot in proto.nodes[old].slot_variables:
            if slot.original_variable_node_id in new_id and slot.slot_variable_node_id in new_id:
                node.slot_variables.add(
                    original_variable_node_id=new_id[slot.original_variable_node_id],
                    slot_name=slot.slot_name,
                    slot_variable_node_id=new_id[slot.slot_variable_node_id],
                )
    return out.SerializeToString()


def _reachable(proto: Any, removed: set[int]) -> set[int]:
    """Nodes the root reaches through children and optimizers' slot references, avoiding `removed`."""
    nodes = proto.nodes
    seen, queue = {0} if nodes else set(), [0] if nodes else []
    while queue:
        node = nodes[queue.pop()]
        linked = [child.node_id for child in node.children]
        linked += [
            slot.slot_variable_node_id for slot in node.slot_variables if slot.original_variable_node_id not in removed
        ]
        for node_id in linked:
            if 0 <= node_id < len(nodes) and node_id not in seen and node_id not in removed:
                seen.add(node_id)
                queue.append(node_id)
    return seen


def _with_slices(reader: BundleSource, entry: BundleEntry, key: bytes) -> dict[bytes, tuple[BundleSource, BundleEntry]]:
    """A tensor to copy under `key`; a partitioned one with each slice, re-keyed under its new name."""
    copies = {key: (reader, entry)}
    for extents in slice_extents(entry):
        part = reader.entries.get(slice_key(entry.key, extents))
        if part is None:
            raise CheckpointError(f"{reader.location}: slice {extents} of partitioned {entry.name} is missing")
        copies[slice_key(key, extents)] = (reader, part)
    return copies


def _encode(values: np.ndarray, where: str) -> Encoded:
    dtype = dtypes.BY_NAME.get(values.dtype.name)
    if dtype is None or dtype.itemsize is None:
        raise OutputError(f"{where}: values of dtype {values.dtype} cannot be written to a TF checkpoint")
    raw = values.astype(values.dtype.newbyteorder("<")).tobytes()
    return dtype.code, tuple(int(size) for size in values.shape), raw, mask(crc32c(raw))


class BundlePlan(NamedTuple):
    """Every output tensor: copied as stored from a bundle, or given as encoded bytes."""

    copies: dict[bytes, tuple[BundleSource, BundleEntry]]
    encoded: dict[bytes, Encoded]
    placed: tuple[Placed, ...]
    total: int  # bytes to write, for progress

    def _in_stored_order(self) -> list[bytes]:
        """New tensors first, then copies in the order their bytes lie in each source: the index is sorted by
        key whatever the data order, and tensors that lie back to back are copied by one call."""
        source_rank: dict[int, int] = {}  # readers in the order first met: the same plan, the same file

        def stored_at(key: bytes) -> tuple[int, int, int, bytes]:
            reader, entry = self.copies[key]
            return source_rank.setdefault(id(reader), len(source_rank)), entry.shard_id, entry.offset, key

        return [*sorted(self.encoded), *sorted(self.copies, key=stored_at)]

    def write(self, out: str, previous: Sequence[Path], progress: Progress | None = None) -> Written:
        """Stream the planned tensors into a new bundle at `out`, then delete `previous` files not rewritten."""
        writer = BundleWriter(out)
        try:
            done = 0
            for key in self._in_stored_order():
                if key in self.encoded:
                    writer.add(key, *self.encoded[key])
                else:
                    writer.copy(*self.copies[key], key=key)
                done += writer.last_size
                if progress:
                    progress(done, self.total)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        for stale in previous:  # shards of an older checkpoint at this prefix with another shard count
            if stale.name not in (Path(writer.data_path).name, Path(writer.index_path).name):
                stale.unlink(missing_ok=True)
        return Written((writer.index_path, writer.data_path), self.placed, writer.verified)


class _Planner:
    """The output's tensors as they are decided: `copies` (as stored) and `encoded` (new bytes), by key."""

    def __init__(self, reader: BundleSource) -> None:
        self.reader = reader
        self.copies: dict[bytes, tuple[BundleSource, BundleEntry]] = {
            entry.key: (reader, entry) for entry in reader.entries.values()
        }
        self.encoded: dict[bytes, Encoded] = {}
        self._copies_from: dict[int, bool] = {}  # reader id -> whether its bytes can be copied as stored

    def _is_bundle(self, reader: object) -> TypeGuard[BundleSource]:
        """`isinstance(reader, BundleSource)`, once per reader: a protocol check costs ~15 µs, and a patch asks
        it for every tensor it adds."""
        known = self._copies_from.get(id(reader))
        if known is None:
            known = self._copies_from[id(reader)] = isinstance(reader, BundleSource)
        return known

    def source_entry(self, name: str) -> BundleEntry:
        entry = self.reader.entries.get(encode_name(name))
        if entry is None or entry.is_slice_data:
            raise OutputError(f"{self.reader.location}: no tensor {name}")
        return entry

    def remove(self, entry: BundleEntry) -> None:
        """Leave out a source tensor, with the slices of a partitioned one."""
        self.copies.pop(entry.key, None)
        for extents in slice_extents(entry):
            self.copies.pop(slice_key(entry.key, extents), None)

    def put(self, key: bytes, source: TensorSource) -> None:
        if isinstance(source, Stored) and self._is_bundle(source.reader):
            entry = source.reader.entries.get(encode_name(source.name))
            if entry is None:
                raise OutputError(f"{source.reader.location}: no tensor {source.name}")
            self.copies.update(_with_slices(source.reader, entry, key))
        else:
            self.encoded[key] = _encode(values_of(source), self.reader.location)

    def taken(self, key: bytes) -> bool:
        return key in self.copies or key in self.encoded


class BundleCheckpointWriter:
    """TF V2 bundles (TF1 name-based, TF2 object-based, a SavedModel's variables), written as one shard."""

    storage = Storage.BUNDLE

    def output_path(self, out: str) -> str:
        return out[: -len(".index")] if out.endswith(".index") else out

    def output_files(self, out: str) -> list[str]:
        """The files the write creates at the prefix `out`, besides the directory's state file."""
        return [out + ".index", data_file_name(out, 0, 1)]

    def existing_outputs(self, out: str) -> list[Path]:
        """A checkpoint's index and data shards (of any shard count) already at the prefix."""
        path = Path(out)
        shard = re.compile(re.escape(path.name) + r"\.data-\d{5}-of-\d{5}")
        found = [p for p in path.parent.glob(glob.escape(path.name) + ".data-*") if shard.fullmatch(p.name)]
        return sorted(p for p in [*found, Path(out + ".index")] if p.is_file())

    def prepare(self, source: Checkpoint, edits: Edits) -> BundlePlan:
        """Everything the new bundle will hold, decided and checked before a byte is written."""
        reader = source.reader
        if not isinstance(reader, BundleSource):
            raise OutputError(f"{reader.location}: not a TF bundle")
        graph = reader.object_graph
        # In a TF2 checkpoint the object graph names every key: dropping means removing its objects too;
        # renaming would mean renaming objects, which restore matches by the model's attribute names.
        refuse_unsupported(edits, reader.location, f"{reader.format} checkpoints", drop=True, rename=graph is None)
        check_replacements(source, edits)
        check_drops_and_renames(source, edits)
        planner = _Planner(reader)
        for replacement in edits.replace:
            entry = planner.source_entry(replacement.name)
            planner.remove(entry)
            planner.put(entry.key, replacement.source)
        for name in edits.drop:
            planner.remove(planner.source_entry(name))
        moved = {old: planner.source_entry(old) for old in edits.rename}
        for entry in moved.values():
            planner.remove(entry)
        for old, new in edits.rename.items():
            if planner.taken(encode_name(new)):
                raise OutputError(f"{reader.location}: cannot rename {old} to {new}, which is already taken")
            planner.copies.update(_with_slices(reader, moved[old], encode_name(new)))

        suffix = ATTRIBUTE_SUFFIX if graph is not None else ""
        added: list[tuple[NewTensor, str]] = []
        for tensor in edits.add:
            key = f"{tensor.layer}/{tensor.variable}{suffix}"
            if planner.taken(encode_name(key)):
                raise OutputError(f"{reader.location}: {key} is already stored")
            planner.put(encode_name(key), tensor.source)
            added.append((tensor, key))
        if graph is not None and (added or edits.drop):
            if edits.drop:
                from ckptdoctor.formats.object_graph import NodesByPath

                pruned = _graph_without(graph, edits.drop, reader.location)
                graph = graph._replace(proto=protos.TrackableObjectGraph.FromString(pruned))
                graph = graph._replace(nodes_by_path=NodesByPath(graph.proto))
            raw, crc = encode_string_tensor([_with_graph_nodes(reader.location, graph, added)])
            planner.copies.pop(OBJECT_GRAPH_KEY.encode(), None)
            planner.encoded[OBJECT_GRAPH_KEY.encode()] = (dtypes.BY_NAME["string"].code, (), raw, crc)

        copies, encoded = planner.copies, planner.encoded
        total = sum(entry.size for _, entry in copies.values()) + sum(len(item[2]) for item in encoded.values())
        placed = tuple(Placed(tensor.layer, tensor.variable, key) for tensor, key in added)
        return BundlePlan(copies, encoded, placed, total)
