"""TF1 meta graphs (`PREFIX.meta`): the variables the graph restores, and the decay each BatchNorm moving
statistic is updated with.

Read natively, never through TensorFlow. A moving statistic v is updated by

    AssignSub[VariableOp](v, Mul(Sub(v, batch_value), factor))      factor = 1 - decay

where `factor` is a constant (`AssignMovingAvg/decay` = 0.1) or a constant expression (`Sub(1.0, Const 0.9)`,
as tf.layers and slim write it for fused BatchNorm), or by FusedBatchNormV3 itself with an
`exponential_avg_factor` other than 1. The variable is found by following op inputs to its VarHandleOp or
VariableV2 node, never by name: ops and variables live under different scopes (slim's
`InceptionV3/InceptionV3/...` ops update `InceptionV3/...` variables).

Control flow v2 (a TF1 script under TF 2.x with `disable_eager_execution()` only, BatchNorm's training flag a
placeholder): tf.cond is an `If`/`StatelessIf` node whose branches are functions of `graph_def.library`. The
updates then live in a branch function (non-fused: `AssignSubVariableOp(arg, Mul(Sub(ReadVariableOp(arg),
arg), decay))`, each argument the If node's input in its caller), or the decay is a cond's output (slim's fused
BatchNorm: `Sub(1.0, StatelessIf)`, 0.999 from the training branch, 1.0 from the other). Each branch is read
as a body whose arguments lead back to its caller; a value from a cond has both branches' values as
candidates, and the decay 1.0 (an update that changes nothing: the inference branch) gives way to the other.

The file (a path, or a URL read by range through the byte source) is untrusted: its size, the node count, the
nodes read in branch functions, the nesting of conds and the depth of folded expressions are bounded, only
scalar constants are folded, and anything unexpected means "no decay known here", never an exception; a
damaged function library (a cond naming a missing function, or not matching its signature) is a problem.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from collections.abc import Mapping
from contextlib import closing

from ckptdoctor import TYPE_CHECKING, dtypes
from ckptdoctor.formats.model_spec import ModelVariable
from ckptdoctor.formats.resolve import SAVED_MODEL_FILE, file_name
from ckptdoctor.typed import NamedTuple

if TYPE_CHECKING:
    from typing import Any

SERVING_TAG = "serve"
MAX_META_GRAPHS = 64  # tag sets in one SavedModel (exports have one or a few); each is a message to parse
MAX_META_BYTES = 64 << 20  # a large training graph (InceptionV3 with its optimizer) is a few MB
MAX_NODES = 500_000  # bounds the Python work of mapping updates (about 3 s and 300 MiB at the limit)
MAX_CHAIN = 16  # Identity/Cast/Sub/Mul hops followed from an update to its variable or its constant
MAX_SCALAR_BYTES = 8  # a constant folded here is one element of at most float64/int64
MAX_FUNCTION_NODES = MAX_NODES  # nodes, arguments, inputs and attributes read in branch functions, each cond's
# branches counted where it is read (a body's work is its size, not its node count)
MAX_COND_DEPTH = 8  # nested tf.cond levels read (slim nests none; hand-written code one or two)
MAX_CANDIDATES = 4  # values a constant expression may take through conds' branches before it is unknown

# The collections that list what tf.compat.v1.train.Saver() restores by default, and which are trainable.
VARIABLE_COLLECTIONS = ("variables", "trainable_variables")
VARIABLE_OPS = frozenset({"VarHandleOp", "VariableV2", "Variable"})
UPDATE_OPS = frozenset({"AssignSubVariableOp", "AssignSub"})
FUSED_WITH_FACTOR = "FusedBatchNormV3"
# Ops a variable's handle or value passes through unchanged on its way to an update.
PASS_THROUGH = frozenset({"Identity", "ReadVariableOp", "Snapshot"})
COND_OPS = frozenset({"If", "StatelessIf"})  # tf.cond of control flow v2: branches are library functions
BRANCHES = ("then_branch", "else_branch")
# DataType enum values (types.proto) a scalar constant may have, with their struct format in tensor_content.
_SCALAR_FORMATS = {1: "<f", 2: "<d", 3: "<i", 9: "<q", 19: "<e"}  # float, double, int32, int64, half
_BFLOAT16 = 14


class MetaGraphDecays(NamedTuple):
    """Decay per variable name, as the update ops of a meta graph apply it."""

    decays: Mapping[str, float] = {}
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

    saved_model = file_name(path) == SAVED_MODEL_FILE
    try:
        if saved_model:
            if _meta_graph_count(data) > MAX_META_GRAPHS:
                return None, f"a SavedModel with more than {MAX_META_GRAPHS} MetaGraphDefs, not read"
            graphs = protos.SavedModel.FromString(data).meta_graphs
            if not graphs:
                return None, "a SavedModel without a MetaGraphDef"
            # The graph tf.saved_model.load serves by default; an export of several tag sets lists it with "serve".
            meta = next((graph for graph in graphs if SERVING_TAG in graph.meta_info_def.tags), graphs[0])
        else:
            meta = protos.MetaGraphDef.FromString(data)
    except (DecodeError, RecursionError) as error:
        what = "a SavedModel (saved_model.pb)" if saved_model else "a MetaGraphDef"
        return None, f"it cannot be parsed as {what} ({type(error).__name__})"
    if len(meta.graph_def.node) > MAX_NODES:
        return None, f"its graph has more than {MAX_NODES} nodes, not read"
    return meta, None


def _meta_graph_count(data: bytes) -> int:
    """How many `meta_graphs` (field 2) a SavedModel's top level holds, counted from the wire format without
    parsing them, and no further than one past the limit (33 million empty ones fit in MAX_META_BYTES and took
    2 GiB to parse). Damaged bytes stop the count; the parse that follows names them."""
    from ckptdoctor.formats.sstable import TableError, decode_varint

    count = offset = 0
    try:
        while offset < len(data) and count <= MAX_META_GRAPHS:
            key, offset = decode_varint(data, offset)
            if key & 7 == 0:  # a varint field (saved_model_schema_version)
                _, offset = decode_varint(data, offset)
            elif key & 7 == 2:  # a length-delimited one: a MetaGraphDef where the field is 2
                length, offset = decode_varint(data, offset)
                offset += length
                count += key >> 3 == 2
            else:
                break
    except TableError:
        pass
    return count


def read_decays(path: str) -> MetaGraphDecays:
    """The decays a meta graph applies; an absent file gives none, a hostile or damaged one gives a problem."""
    meta, problem = _parse(path)
    if meta is None:
        return MetaGraphDecays(problem=problem)
    try:
        return MetaGraphDecays(decays=_Graph(meta.graph_def).decays())
    except _DamagedLibrary as error:
        return MetaGraphDecays(problem=str(error))


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
    if not definitions:  # nothing to match: every checkpoint variable would come out "unexpected"
        raise ModelError(
            f"{path}: its graph lists no variables (a TF2 SavedModel's does not: it restores by its object graph; "
            "use `ckptdoctor verify --model`)"
        )
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
    """The node an input names; None for a control input (`^node`)."""
    return None if input_name.startswith("^") else _endpoint(input_name)[0]


def _endpoint(input_name: str) -> tuple[str, int]:
    """(node, output index) an input names: `node` or `node:2` in a graph, `node:output:2` in a function. Any
    other text names no node: it is returned whole, output 0. An index int() refuses (`²`, a digit to
    str.isdigit) is output 0."""
    parts = input_name.split(":")
    index = parts[-1]
    if parts[0] and index.isdigit() and (len(parts) == 2 or (len(parts) == 3 and not parts[1].isdigit())):
        return parts[0], int(index) if index.isascii() else 0
    return input_name, 0


class _DamagedLibrary(Exception):
    """The graph's function library cannot be read as TF writes it, or reading it would pass a limit."""


class _Body:
    """The nodes of the graph, or of one branch function as one cond calls it: each argument is the cond's
    input in its caller's body. Hashed by identity: one body per function per cond that calls it."""

    __slots__ = ("arguments", "depth", "nodes")

    def __init__(self, nodes: dict, arguments: dict[str, tuple[_Body, str]] | None = None, depth: int = 0) -> None:
        self.nodes = nodes
        self.arguments = {} if arguments is None else arguments
        self.depth = depth


class _Graph:
    def __init__(self, graph_def) -> None:
        self.main = _Body({node.name: node for node in graph_def.node})
        self.functions = {function.signature.name: function for function in graph_def.library.function}
        if sum(len(function.node_def) for function in self.functions.values()) > MAX_FUNCTION_NODES:
            raise _DamagedLibrary(f"its function library has more than {MAX_FUNCTION_NODES} nodes, not read")
        self._function_nodes: dict[str, dict] = {}
        self._function_cost: dict[str, int] = {}
        self._returned: dict[str, tuple[list[str], dict[str, str]]] = {}  # function -> its outputs, ret map
        self._calls: dict[tuple[_Body, str], list[_Body]] = {}  # (body, cond node) -> its branches' bodies
        self._assigning: dict[str, bool] = {}  # function -> whether it (or a cond in it) updates a variable
        self._budget = MAX_FUNCTION_NODES
        self._folded: dict[tuple[_Body, str], tuple[float, ...]] = {}

    def decays(self) -> dict[str, float]:
        found: dict[str, set[float]] = {}
        for body in self._bodies():
            for node in body.nodes.values():
                for variable, decay in self._updates(body, node):
                    found.setdefault(variable, set()).add(decay)
        # A variable updated with two different decays (two towers disagreeing) has no one decay.
        return {name: decays.pop() for name, decays in found.items() if len(decays) == 1}

    def _bodies(self) -> list[_Body]:
        """The graph and every branch, as its cond calls it, of a cond whose branches update variables."""
        bodies, pending = [self.main], [self.main]
        while pending:
            body = pending.pop()
            for node in body.nodes.values():
                if node.op in COND_OPS and any(self._assigns(name, body.depth) for name in self._branch_names(node)):
                    branches = self.branches(body, node)
                    bodies.extend(branches)
                    pending.extend(branches)
        return bodies

    def _branch_names(self, node) -> list[str]:
        attrs = _attrs(node)
        names = [attrs[attr].func.name for attr in BRANCHES if attr in attrs]
        if len(names) != len(BRANCHES) or any(name not in self.functions for name in names):
            raise _DamagedLibrary(f"cond {node.name!r} names a branch its function library lacks")
        return names

    def _assigns(self, name: str, depth: int) -> bool:
        if name not in self._assigning:
            self._assigning[name] = False  # also ends a cycle of functions calling each other
            nodes = self.functions[name].node_def if depth < MAX_COND_DEPTH else ()
            self._assigning[name] = any(
                node.op in UPDATE_OPS
                or _fused_factor(node) is not None
                or (
                    node.op in COND_OPS and any(self._assigns(branch, depth + 1) for branch in self._branch_names(node))
                )
                for node in nodes
            )
        return self._assigning[name]

    def branches(self, body: _Body, node) -> list[_Body]:
        """The bodies of a cond's branches, their arguments bound to its inputs after the predicate."""
        key = (body, node.name)
        if key not in self._calls:
            if body.depth >= MAX_COND_DEPTH:
                raise _DamagedLibrary(f"its conds are nested deeper than {MAX_COND_DEPTH} levels, not read")
            inputs = [name for name in node.input if not name.startswith("^")][1:]
            bodies = []
            for name in self._branch_names(node):
                signature = self.functions[name].signature
                if len(signature.input_arg) != len(inputs):
                    raise _DamagedLibrary(f"cond {node.name!r} gives {name!r} other inputs than it takes")
                arguments = {arg.name: (body, value) for arg, value in zip(signature.input_arg, inputs, strict=True)}
                bodies.append(_Body(self._nodes_of(name), arguments, body.depth + 1))
            self._calls[key] = bodies
        return self._calls[key]

    def _nodes_of(self, name: str) -> dict:
        function = self.functions[name]
        nodes = function.node_def
        if name not in self._function_cost:  # what one body of it costs to bind, walk and fold
            sizes = (1 + len(node.input) + len(node.attr) for node in nodes)
            self._function_cost[name] = 1 + len(function.signature.input_arg) + sum(sizes)
        self._budget -= self._function_cost[name]
        if self._budget < 0:
            raise _DamagedLibrary(f"its conds call more than {MAX_FUNCTION_NODES} nodes of functions, not read")
        if name not in self._function_nodes:
            self._function_nodes[name] = {node.name: node for node in nodes}
        return self._function_nodes[name]

    def _updates(self, body: _Body, node) -> list[tuple[str, float]]:
        if node.op in UPDATE_OPS and len(node.input) >= 2:
            variable = self.variable(body, node.input[0])
            decay = self._decay_of_delta(body, node.input[1], variable) if variable else None
            return [(variable, decay)] if variable and decay is not None else []
        factor = _fused_factor(node)
        decay = _decay(factor) if factor is not None else None
        if decay is not None and len(node.input) >= 5:
            statistics = (self.variable(body, node.input[3]), self.variable(body, node.input[4]))
            return [(variable, decay) for variable in statistics if variable]
        return []

    def _decay_of_delta(self, body: _Body, input_name: str, variable: str) -> float | None:
        """d where the update's delta is Mul(Sub(variable, value), 1 - d), in either operand order. Where the
        factor comes from a cond, a branch giving d = 1 (no update: the inference branch) gives way."""
        delta = self._node(body, input_name)
        for _ in range(MAX_CHAIN):
            if delta is None or delta[1].op != "Identity" or not delta[1].input:
                break
            delta = self._node(delta[0], delta[1].input[0])
        if delta is None or delta[1].op != "Mul" or len(delta[1].input) < 2:
            return None
        where, mul = delta
        for difference, factor in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            sub = self._node(where, difference)
            if (
                sub is None
                or sub[1].op != "Sub"
                or not sub[1].input
                or self.variable(sub[0], sub[1].input[0]) != variable
            ):
                continue
            decays = {d for d in map(_decay, self.fold(where, factor)) if d is not None}
            if len(decays) > 1:
                decays.discard(1.0)
            return decays.pop() if len(decays) == 1 else None
        return None

    def _node(self, body: _Body, input_name: str) -> tuple[_Body, Any] | None:
        """The node an input names and the body it is in, an argument followed to its caller's input."""
        for _ in range(MAX_COND_DEPTH + 1):
            name = _source(input_name)
            if name is None:
                return None
            if name not in body.arguments:
                node = body.nodes.get(name)
                return (body, node) if node is not None else None
            body, input_name = body.arguments[name]
        return None

    def variable(self, body: _Body, input_name: str) -> str | None:
        """The variable an input reads or refers to, followed through Identity, ReadVariableOp and the
        arguments of branch functions; a variable node of the graph itself, never one inside a function."""
        found = self._node(body, input_name)
        for _ in range(MAX_CHAIN):
            if found is None:
                return None
            where, node = found
            if node.op in VARIABLE_OPS:
                return node.name if where is self.main else None
            if node.op not in PASS_THROUGH or not node.input:
                return None
            found = self._node(where, node.input[0])
        return None

    def fold(self, body: _Body, input_name: str, depth: int = 0) -> tuple[float, ...]:
        """The values a scalar constant expression (Const, Identity, Cast, Sub, Mul, a cond's output) may take:
        one, or one per branch of the conds it goes through; () where it is not one."""
        found = self._node(body, input_name)
        if found is None or depth > MAX_CHAIN:
            return ()
        where, node = found
        index = _endpoint(input_name)[1]
        key = (where, f"{node.name}:{index if node.op in COND_OPS else 0}")
        if key not in self._folded:
            self._folded[key] = ()  # also breaks cycles in a hostile graph
            self._folded[key] = self._fold_node(where, node, index, depth)
        return self._folded[key]

    def _fold_node(self, body: _Body, node, index: int, depth: int) -> tuple[float, ...]:
        if node.op == "Const":
            for entry in node.attr:
                if entry.key == "value":
                    value = _scalar(entry.value.tensor)
                    return (value,) if value is not None else ()
            return ()
        if node.op in ("Identity", "Cast") and node.input:
            return self.fold(body, node.input[0], depth + 1)
        if node.op in ("Sub", "Mul") and len(node.input) >= 2:
            a, b = self.fold(body, node.input[0], depth + 1), self.fold(body, node.input[1], depth + 1)
            return _candidates({x - y if node.op == "Sub" else x * y for x in a for y in b})
        if node.op in COND_OPS:
            values: set[float] = set()
            for branch, name in zip(self.branches(body, node), self._branch_names(node), strict=True):
                outputs, returned = self._outputs(name)
                result = returned.get(outputs[index]) if index < len(outputs) else None
                folded = self.fold(branch, result, depth + 1) if result is not None else ()
                if not folded:
                    return ()  # a branch whose value is unknown: the cond's value is unknown
                values.update(folded)
            return _candidates(values)
        return ()

    def _outputs(self, name: str) -> tuple[list[str], dict[str, str]]:
        """A function's output names and what each returns, read once (a cond may have many outputs)."""
        if name not in self._returned:
            function = self.functions[name]
            outputs = [arg.name for arg in function.signature.output_arg]
            self._returned[name] = outputs, {entry.key: entry.value for entry in function.ret}
        return self._returned[name]


def _candidates(values: set[float]) -> tuple[float, ...]:
    return tuple(sorted(values)) if len(values) <= MAX_CANDIDATES else ()


def _attrs(node) -> dict:
    """A NodeDef's attributes by name (the map is a list of entries in ckptdoctor's protos)."""
    return {entry.key: entry.value for entry in node.attr}


def _fused_factor(node) -> float | None:
    """The exponential_avg_factor of a training-mode FusedBatchNormV3 that averages itself (factor != 1)."""
    if node.op != FUSED_WITH_FACTOR:
        return None
    attrs = _attrs(node)
    factor = attrs["exponential_avg_factor"].f if "exponential_avg_factor" in attrs else 1.0
    is_training = attrs["is_training"].b if "is_training" in attrs else True  # TF's default
    return factor if is_training and factor != 1.0 else None


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
