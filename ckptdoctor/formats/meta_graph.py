"""TF1 meta graphs (`PREFIX.meta`): the variables the graph restores, and the decay each BatchNorm moving
statistic is updated with.

Read natively, never through TensorFlow. A moving statistic v is updated by

    AssignSub[VariableOp](v, Mul(Sub(v, batch_value), factor))      factor = 1 - decay

where `factor` is a constant (`AssignMovingAvg/decay` = 0.1) or a constant expression (`Sub(1.0, Const 0.9)`,
as tf.layers and slim write it for fused BatchNorm), or by FusedBatchNormV3 itself with an
`exponential_avg_factor` other than 1. The variable is found by following op inputs to its VarHandleOp or
VariableV2 node, never by name: ops and variables live under different scopes (slim's
`InceptionV3/InceptionV3/...` ops update `InceptionV3/...` variables).

The file (a path, or a URL read by range through the byte source) is untrusted: its size, the node count and
the depth of folded expressions are bounded, only scalar constants are folded, and anything unexpected means
"no decay known here", never an exception.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from contextlib import closing
from dataclasses import dataclass, field

from ckptdoctor import dtypes
from ckptdoctor.formats.model_spec import ModelVariable

MAX_META_BYTES = 64 << 20  # a large training graph (InceptionV3 with its optimizer) is a few MB
MAX_NODES = 500_000  # bounds the Python work of mapping updates (about 3 s and 300 MiB at the limit)
MAX_CHAIN = 16  # Identity/Cast/Sub/Mul hops followed from an update to its variable or its constant
MAX_SCALAR_BYTES = 8  # a constant folded here is one element of at most float64/int64

# The collections that list what tf.compat.v1.train.Saver() restores by default, and which are trainable.
VARIABLE_COLLECTIONS = ("variables", "trainable_variables")
VARIABLE_OPS = frozenset({"VarHandleOp", "VariableV2", "Variable"})
UPDATE_OPS = frozenset({"AssignSubVariableOp", "AssignSub"})
FUSED_WITH_FACTOR = "FusedBatchNormV3"
# Ops a variable's handle or value passes through unchanged on its way to an update.
PASS_THROUGH = frozenset({"Identity", "ReadVariableOp", "Snapshot"})
# DataType enum values (types.proto) a scalar constant may have, with their struct format in tensor_content.
_SCALAR_FORMATS = {1: "<f", 2: "<d", 3: "<i", 9: "<q", 19: "<e"}  # float, double, int32, int64, half
_BFLOAT16 = 14


@dataclass(frozen=True)
class MetaGraphDecays:
    """Decay per variable name, as the update ops of a meta graph apply it."""

    decays: dict[str, float] = field(default_factory=dict)
    problem: str | None = None  # why no decay could be read from an existing .meta, in a few words


def _read(path: str) -> tuple[bytes | None, str | None]:
    """The file's bytes through its byte source (a URL is fetched by range), at most MAX_META_BYTES; or None
    and why not in a few words; None, None when absent. A local symbolic link is not followed."""
    from ckptdoctor.errors import CheckpointError
    from ckptdoctor.formats.bytesource import MissingFile, is_url, open_source, without_secrets

    if not is_url(path):
        try:
            info = os.lstat(path)
        except OSError:
            return None, None
        if stat.S_ISLNK(info.st_mode):
            return None, "it is a symbolic link, not followed"
        if not stat.S_ISREG(info.st_mode):
            return None, "it is not a regular file"
    try:
        with closing(open_source(path)) as source:
            if source.size() > MAX_META_BYTES:
                return None, f"it is larger than {MAX_META_BYTES >> 20} MiB, not read"
            data = source.read(0, MAX_META_BYTES + 1)
    except MissingFile:
        return None, None
    except CheckpointError as error:  # e.g. a store's 403: the message names the file, said once here
        return None, f"it cannot be read ({str(error).removeprefix(without_secrets(path) + ': ')})"
    except OSError as error:
        return None, f"it cannot be read ({error.strerror})"
    if len(data) > MAX_META_BYTES:  # grew since its size was asked
        return None, f"it is larger than {MAX_META_BYTES >> 20} MiB, not read"
    return data, None


def _parse(path: str):
    """(MetaGraphDef, None) or (None, why it cannot be read in a few words); None, None when absent."""
    data, problem = _read(path)
    if data is None:
        return None, problem  # the common case (no .meta) returns before protobuf's import
    from google.protobuf.message import DecodeError

    from ckptdoctor.formats import protos

    meta = protos.MetaGraphDef()
    try:
        meta.ParseFromString(data)
    except (DecodeError, RecursionError) as error:
        return None, f"it cannot be parsed as a MetaGraphDef ({type(error).__name__})"
    if len(meta.graph_def.node) > MAX_NODES:
        return None, f"its graph has more than {MAX_NODES} nodes, not read"
    return meta, None


def read_decays(path: str) -> MetaGraphDecays:
    """The decays a meta graph applies; an absent file gives none, a hostile or damaged one gives a problem."""
    meta, problem = _parse(path)
    if meta is None:
        return MetaGraphDecays(problem=problem)
    return MetaGraphDecays(decays=_Graph(meta.graph_def.node).decays())


def read_variables(path: str) -> tuple[ModelVariable, ...]:
    """Every variable in the meta graph's `variables` and `trainable_variables` collections, from its
    VariableDef and its variable node's `dtype` and `shape` attributes. Raises ModelError on a bad file."""
    from google.protobuf.message import DecodeError

    from ckptdoctor.errors import ModelError
    from ckptdoctor.formats import protos
    from ckptdoctor.formats.bytesource import without_secrets

    meta, problem = _parse(path)
    path = without_secrets(path)  # a URL's token stays out of every message
    if meta is None:
        raise ModelError(f"{path}: {problem or 'meta graph file not found'}")
    collections = {entry.key: entry.value.bytes_list.value for entry in meta.collection_def}
    trainable = set()
    definitions: list[tuple[bytes, bool]] = []
    for key in VARIABLE_COLLECTIONS:
        for serialized in collections.get(key, ()):
            definitions.append((serialized, key == "trainable_variables"))
    if len(definitions) > MAX_NODES:
        raise ModelError(f"{path}: more than {MAX_NODES} variable definitions, not read")
    nodes = {node.name: node for node in meta.graph_def.node}
    found: dict[str, ModelVariable] = {}
    for serialized, is_trainable in definitions:
        definition = protos.VariableDef()
        try:
            definition.ParseFromString(serialized)
        except (DecodeError, RecursionError):
            raise ModelError(f"{path}: a variable definition cannot be parsed (VariableDef)") from None
        op_name = _source(definition.variable_name) or ""
        node = nodes.get(op_name)
        if node is None or node.op not in VARIABLE_OPS:
            raise ModelError(f"{path}: variable {definition.variable_name!r} names no variable node in the graph")
        attrs = {entry.key: entry.value for entry in node.attr}
        dtype = dtypes.from_code(attrs["dtype"].type).name if "dtype" in attrs else "unknown"
        shape = _shape(attrs["shape"].shape) if "shape" in attrs else None
        key = op_name
        slice_info = definition.save_slice_info_def
        if slice_info.full_name:  # one part of a partitioned variable: the checkpoint holds the whole
            key, shape = slice_info.full_name, tuple(int(d) for d in slice_info.full_shape)
        if is_trainable:
            trainable.add(key)
        found.setdefault(key, ModelVariable(key, dtype, shape, False))
    return tuple(ModelVariable(v.name, v.dtype, v.shape, v.name in trainable) for v in found.values())


def _shape(proto) -> tuple[int, ...] | None:
    return None if proto.unknown_rank else tuple(int(dim.size) for dim in proto.dim)


def _source(input_name: str) -> str | None:
    """The node an input names (`node` or `node:1`); None for a control input (`^node`)."""
    if input_name.startswith("^"):
        return None
    name, _, port = input_name.rpartition(":")
    return name if name and port.isdigit() else input_name


class _Graph:
    def __init__(self, nodes) -> None:
        self.nodes = {node.name: node for node in nodes}
        self._folded: dict[str, float | None] = {}

    def decays(self) -> dict[str, float]:
        found: dict[str, set[float]] = {}
        for node in self.nodes.values():
            for variable, decay in self._updates(node):
                found.setdefault(variable, set()).add(decay)
        # A variable updated with two different decays (two towers disagreeing) has no one decay.
        return {name: decays.pop() for name, decays in found.items() if len(decays) == 1}

    def _updates(self, node) -> list[tuple[str, float]]:
        if node.op in UPDATE_OPS and len(node.input) >= 2:
            variable = self.variable(node.input[0])
            decay = self._decay_of_delta(node.input[1], variable) if variable else None
            return [(variable, decay)] if variable and decay is not None else []
        if node.op == FUSED_WITH_FACTOR and len(node.input) >= 5:
            attrs = {entry.key: entry.value for entry in node.attr}
            factor = attrs["exponential_avg_factor"].f if "exponential_avg_factor" in attrs else 1.0
            is_training = attrs["is_training"].b if "is_training" in attrs else True  # TF's default
            decay = _decay(factor)
            if not is_training or factor == 1.0 or decay is None:
                return []
            statistics = (self.variable(node.input[3]), self.variable(node.input[4]))
            return [(variable, decay) for variable in statistics if variable]
        return []

    def _decay_of_delta(self, input_name: str, variable: str) -> float | None:
        """d where the update's delta is Mul(Sub(variable, value), 1 - d), in either operand order."""
        delta = self._node(input_name)
        for _ in range(MAX_CHAIN):
            if delta is None or delta.op != "Identity" or not delta.input:
                break
            delta = self._node(delta.input[0])
        if delta is None or delta.op != "Mul" or len(delta.input) < 2:
            return None
        for difference, factor in ((delta.input[0], delta.input[1]), (delta.input[1], delta.input[0])):
            sub = self._node(difference)
            if sub is not None and sub.op == "Sub" and sub.input and self.variable(sub.input[0]) == variable:
                value = self.fold(factor)
                return _decay(value) if value is not None else None
        return None

    def _node(self, input_name: str):
        name = _source(input_name)
        return self.nodes.get(name) if name is not None else None

    def variable(self, input_name: str) -> str | None:
        """The variable an input reads or refers to, followed through Identity and ReadVariableOp."""
        node = self._node(input_name)
        for _ in range(MAX_CHAIN):
            if node is None:
                return None
            if node.op in VARIABLE_OPS:
                return node.name
            if node.op not in PASS_THROUGH or not node.input:
                return None
            node = self._node(node.input[0])
        return None

    def fold(self, input_name: str, depth: int = 0) -> float | None:
        """The value of a scalar constant expression (Const, Identity, Cast, Sub, Mul), else None."""
        name = _source(input_name)
        if name is None or depth > MAX_CHAIN:
            return None
        if name not in self._folded:
            node = self.nodes.get(name)
            self._folded[name] = None  # also breaks cycles in a hostile graph
            self._folded[name] = self._fold_node(node, depth) if node is not None else None
        return self._folded[name]

    def _fold_node(self, node, depth: int) -> float | None:
        if node.op == "Const":
            for entry in node.attr:
                if entry.key == "value":
                    return _scalar(entry.value.tensor)
            return None
        if node.op in ("Identity", "Cast") and node.input:
            return self.fold(node.input[0], depth + 1)
        if node.op in ("Sub", "Mul") and len(node.input) >= 2:
            a, b = self.fold(node.input[0], depth + 1), self.fold(node.input[1], depth + 1)
            if a is None or b is None:
                return None
            return a - b if node.op == "Sub" else a * b
        return None


def _decay(factor: float) -> float | None:
    decay = 1.0 - factor
    return decay if math.isfinite(decay) and 0.0 <= decay <= 1.0 else None


def _scalar(tensor) -> float | None:
    """One element of a TensorProto, or None where it holds more (or nothing readable)."""
    if any(dim.size != 1 for dim in tensor.tensor_shape.dim):
        return None
    content = tensor.tensor_content
    if content:
        if len(content) > MAX_SCALAR_BYTES:
            return None
        if tensor.dtype == _BFLOAT16 and len(content) == 2:
            return struct.unpack("<f", b"\0\0" + content)[0]
        fmt = _SCALAR_FORMATS.get(tensor.dtype)
        if fmt is None or struct.calcsize(fmt) != len(content):
            return None
        return float(struct.unpack(fmt, content)[0])
    for values in (tensor.float_val, tensor.double_val, tensor.int_val, tensor.int64_val):
        if len(values) == 1:
            return float(values[0])
        if len(values) > 1:
            return None
    if len(tensor.half_val) == 1:
        bits = tensor.half_val[0] & 0xFFFF
        if tensor.dtype == _BFLOAT16:
            return struct.unpack("<f", struct.pack("<I", bits << 16))[0]
        return struct.unpack("<e", struct.pack("<H", bits))[0]
    return None
