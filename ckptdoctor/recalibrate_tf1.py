"""TF1 graphs: each BatchNorm layer's batch statistics, fetched from the checkpoint's own training graph.

The graph is the `PREFIX.meta` tf.train.Saver writes beside a checkpoint (or --meta-graph). A layer is found
from the update of its moving statistic, followed backwards through the op inputs to the batch statistic it
applies: output 1 or 2 of a `FusedBatchNorm*` op, or the `moments` (`Mean`, `Mean(SquaredDifference)`) of a
non-fused BatchNorm. The variable is the update's target, found through its inputs, never by name: slim's
ops live under `InceptionV3/InceptionV3/...` and its variables under `InceptionV3/...`. The update ops
themselves are never run.

Control flow v2 (TF 2.x with only `disable_eager_execution()`): tf.cond is an `If`/`StatelessIf` op whose
branches are functions of the graph's library, so a BatchNorm with `is_training=<placeholder>` has its fused
op, or its moving-average updates, inside branch functions. Those branches are copied into the graph
(`_Conds`: each argument mapped to the If op's input, nested conds followed to MAX_COND_DEPTH), and the search
goes from an If op's output k to output k of either branch: the branch is chosen by what it computes (a
training-mode batch statistic), never by assuming then=True. The predicate of every cond the search went
through is fed the value selecting that branch, so the layers run in training mode as the statistics assume.

What TensorFlow's fused op returns in training mode (checked against numpy in tests/test_recalibrate.py):
output 1 is the batch mean and output 2 the batch variance with Bessel's correction n/(n-1), the value the
moving average is fed; normalisation uses the biased variance, so it is multiplied back by (n-1)/n. A
FusedBatchNormV3 with `exponential_avg_factor` f != 1 returns (1-f)*running + f*batch for both; the running
inputs are fetched with them and the batch value recovered."""

from __future__ import annotations

import os
from collections import deque
from functools import cached_property

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.analysis.checkpoint import Checkpoint
from ckptdoctor.errors import ConfigError, ModelError, first_line
from ckptdoctor.formats.meta_graph import BRANCHES, COND_OPS, PASS_THROUGH, VARIABLE_OPS
from ckptdoctor.formats.resolve import meta_graph_path
from ckptdoctor.recalibrate import BatchMoments, DataError, LayerStatistics, RecalibrateError

if TYPE_CHECKING:
    from typing import Any

    from ckptdoctor.recalibrate import Batch

FUSED_OPS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})
# Ops that write a moving statistic: assign_moving_average's AssignSub, or an Assign of the fused op's output.
UPDATE_OPS = frozenset({"AssignSub", "AssignSubVariableOp", "Assign", "AssignVariableOp"})
# Arithmetic between a batch statistic and its update (decay, zero-debiasing, casts, tf.cond of v1 control
# flow). The search backwards from an update goes through these only, so it never leaves the layer.
UPDATE_ARITHMETIC = frozenset(
    {"Identity", "Snapshot", "Sub", "Mul", "Cast", "Squeeze", "Reshape", "Merge", "Switch", "Add", "AddV2", "RealDiv"}
    | {"Maximum", "Minimum", "StopGradient", "ReadVariableOp"}
)
# COND_OPS and BRANCHES (the predicate value selecting each: True, False) are the .meta reader's.
MAX_SEARCH_OPS = 64  # ops visited backwards from one update to the batch statistic it applies
MAX_COND_DEPTH = 4  # nested tf.cond levels followed into branch functions (slim nests none, users one or two)
MAX_INLINED_BRANCHES = 2048  # branch functions copied into the graph (InceptionV3 non-fused: ~760)
# Nodes those copies add in all. A cond names its branch, so a small file can name one large function from
# thousands of conds, and TF adds an op in ~0.3 ms (a 170 KB graph at 50,000 took 17 s and 760 MiB); slim's
# InceptionV3 has ~2,100 nodes in all its branches, ~15,000 where its BatchNorm is not fused.
MAX_INLINED_NODES = 30_000
INLINED_SCOPE = "ckptdoctor_inlined"  # the name scope of copied branches: their argument placeholders are no input
MAX_CHAIN = 16  # Identity/ReadVariableOp hops from an update to its variable
STATISTIC_LEAVES = ("moving_mean", "moving_variance")
MEAN, VARIANCE = "mean", "variance"


def training_graph(prefix: str) -> str:
    """The training graph tf.train.Saver wrote beside the checkpoint, or a ModelError saying how to get one."""
    path = meta_graph_path(prefix)
    if not os.path.isfile(path):
        raise ModelError(
            f"{path}: no training graph beside the checkpoint; give one with --meta-graph FILE (the .meta "
            "tf.train.Saver writes while training, or tf.compat.v1.train.export_meta_graph of the graph built "
            "with is_training=True)"
        )
    return path


class _Layer:
    """One BatchNorm computation, filled in as the graph is walked: a fused op, or the moments of one input tensor."""

    def __init__(self, key: str, fused: Any = None, x: Any = None, route: tuple[tuple[Any, bool], ...] = ()) -> None:
        self.key = key
        self.fused = fused  # the FusedBatchNorm* op
        self.moments: dict[str, Any] = {}  # kind -> the statistic tensor (non-fused)
        self.x = x  # the normalised input
        self.variables: dict[str, set[str]] = {}  # kind -> the moving statistics it updates
        self.route = route  # (If op, predicate value of the branch) the statistics came through


class _Conds:
    """The If/StatelessIf ops of a graph, their branch functions copied into it when a search needs them.

    A branch function becomes ops under INLINED_SCOPE through import_graph_def, each argument mapped to the If
    op's input after the predicate, so the copied ops read the graph's own variables and tensors; a copy is
    never run except where its batch statistic is fetched. Why a cond could not be followed is kept for the
    message, so that a graph we cannot read is never called an evaluation graph."""

    def __init__(self, tf, graph) -> None:
        self._tf = tf
        self._graph = graph
        self._branches: dict[str, list[tuple[bool, list] | None]] = {}  # If op name -> its copied branches
        self._origin: dict[str, tuple] = {}  # copied op name -> the (If op, predicate value) branches it is in
        self._writes: dict[str, bool] = {}  # function name -> whether it (or a cond inside) assigns a variable
        self._copied_conds: list = []  # conds inside copied branches, not yet looked at by inline_updates
        self.inlined = 0
        self.inlined_nodes = 0
        self.unfollowed: str | None = None

    @cached_property
    def _library(self) -> dict:
        """The graph's functions by name, read only when a graph has conds (as_graph_def copies the graph)."""
        return {function.signature.name: function for function in self._graph.as_graph_def().library.function}

    def branches(self, op) -> list[tuple[bool, list]]:
        """(predicate value, the branch's output tensors) for each branch of a cond that could be copied."""
        if op.name not in self._branches:
            self._branches[op.name] = [self._inline(op, attr) for attr in BRANCHES]
        return [branch for branch in self._branches[op.name] if branch is not None]

    def constant(self, op, index: int) -> bool:
        """Whether output `index` of both branches is a Const node (slim's decay: 0.999 in training, 1.0 in
        inference), which holds no batch statistic: the search need not copy the cond."""
        for attr in BRANCHES:
            function = self._library.get(op.get_attr(attr).name)
            if function is None or index >= len(function.signature.output_arg):
                return False
            source = function.ret.get(function.signature.output_arg[index].name, "").split(":")[0]
            if not any(node.name == source and node.op == "Const" for node in function.node_def):
                return False
        return True

    def _inline(self, op, attr: str) -> tuple[bool, list] | None:
        from tensorflow.python.framework.function_def_to_graph import function_def_to_graph_def

        origin = (*self.origin(op), (op, attr == BRANCHES[0]))
        if len(origin) > MAX_COND_DEPTH:
            self.unfollowed = f"tf.cond nested deeper than {MAX_COND_DEPTH} levels"
            return None
        if self.inlined >= MAX_INLINED_BRANCHES:
            self.unfollowed = f"more than {MAX_INLINED_BRANCHES} tf.cond branches"
            return None
        function = self._library.get(op.get_attr(attr).name)
        arguments = list(op.inputs[1:])
        if function is None or len(function.signature.input_arg) != len(arguments):
            self.unfollowed = f"the {attr} of {op.name} is not a function of the graph's library taking its inputs"
            return None
        if self.inlined_nodes + len(function.node_def) > MAX_INLINED_NODES:
            self.unfollowed = f"tf.cond branches of more than {MAX_INLINED_NODES} nodes in all"
            return None
        self.inlined += 1
        self.inlined_nodes += len(function.node_def)
        try:
            graph_def, tensor_names = function_def_to_graph_def(function)
            for node in graph_def.node:  # colocation with ops outside the function cannot be resolved here
                node.attr.pop("_class", None)
                node.device = ""
            outputs = [tensor_names[function.ret[arg.name]] for arg in function.signature.output_arg]
            parameters = zip(function.signature.input_arg, arguments, strict=True)
            # The copy's ops come back by name: listing the graph's ops after each copy made copying quadratic.
            returned = self._tf.compat.v1.import_graph_def(
                graph_def,
                input_map={f"{arg.name}:0": tensor for arg, tensor in parameters},
                return_elements=[*outputs, *(node.name for node in graph_def.node)],
                name=f"{INLINED_SCOPE}/{op.name}/{attr}",
            )
        except Exception as error:  # TF raises many types for a function it cannot import
            self.unfollowed = f"the {attr} of {op.name} cannot be copied into the graph ({first_line(error)})"
            return None
        copied, new_ops = returned[: len(outputs)], returned[len(outputs) :]
        for new in new_ops:
            self._origin[new.name] = origin
            if new.type in COND_OPS:
                self._copied_conds.append(new)
        return attr == BRANCHES[0], copied

    def inline_updates(self) -> None:
        """Copy in every branch that assigns a variable (directly or in a nested cond), so that the moving
        average updates inside conds are graph ops for find_layers."""
        pending = [op for op in self._graph.get_operations() if op.type in COND_OPS]
        while pending:
            op = pending.pop()
            if any(self._assigns(op.get_attr(attr).name, 0) for attr in BRANCHES):
                self.branches(op)
                pending.extend(self._copied_conds)
            self._copied_conds.clear()

    def _assigns(self, name: str, depth: int) -> bool:
        if name not in self._writes:
            self._writes[name] = False  # also ends a hostile cycle of functions
            function = self._library.get(name)
            nodes = function.node_def if function is not None and depth <= MAX_COND_DEPTH else ()
            self._writes[name] = any(
                node.op in UPDATE_OPS
                or (node.op in COND_OPS and any(self._assigns(branch, depth + 1) for branch in _branch_names(node)))
                for node in nodes
            )
        return self._writes[name]

    def holds_batchnorm(self) -> bool:
        """Whether some function of the library updates a variable or runs a training-mode fused BatchNorm."""
        return any(
            node.op in UPDATE_OPS
            or (node.op in FUSED_OPS and ("is_training" not in node.attr or node.attr["is_training"].b))
            for function in self._library.values()
            for node in function.node_def
        )

    def is_copy(self, op) -> bool:
        return op.name in self._origin

    def origin(self, op) -> tuple:
        """The branches (If op, predicate value), outermost first, a copied op was copied from; () for others."""
        return self._origin.get(op.name, ())


def _branch_names(node) -> list[str]:
    """The branch functions a cond's NodeDef names (`in` first: a message map inserts what [] asks for)."""
    return [node.attr[attr].func.name for attr in BRANCHES if attr in node.attr]


def _variable_of(tensor) -> str | None:
    """The variable an update writes, followed through Identity and ReadVariableOp to its variable op."""
    op = tensor.op
    for _ in range(MAX_CHAIN):
        if op.type in VARIABLE_OPS:
            return op.name
        if op.type not in PASS_THROUGH or not op.inputs:
            return None
        op = op.inputs[0].op
    return None


def _moments(tensor) -> tuple[str, str, Any] | None:
    """(layer key, kind, input) where the tensor is the mean or variance of tf.nn.moments (maybe squeezed)."""
    op = tensor.op
    if op.type in ("Squeeze", "Reshape", "Identity") and op.inputs:
        op = op.inputs[0].op
    if op.type != "Mean" or not op.inputs:
        return None
    source = op.inputs[0].op
    if source.type == "SquaredDifference" and source.inputs:
        x = source.inputs[0]
        return f"moments:{x.name}", VARIANCE, x
    x = op.inputs[0]
    return f"moments:{x.name}", MEAN, x


def _batch_statistic(update, conds: _Conds) -> tuple[_Layer, str] | None:
    """The BatchNorm computation and statistic kind an update op applies, searched backwards from its value.
    An If op's output k leads to output k of each branch; the branch whose value is a training-mode batch
    statistic is the one taken (the other reads the moving statistic, or runs BatchNorm in inference mode)."""
    queue: deque[tuple[Any, tuple]] = deque((tensor, ()) for tensor in update.inputs[1:2])
    seen: set[str] = set()
    while queue and len(seen) < MAX_SEARCH_OPS:
        tensor, route = queue.popleft()
        if tensor.name in seen:
            continue
        seen.add(tensor.name)
        op = tensor.op
        if op.type in FUSED_OPS:
            if tensor.value_index not in (1, 2) or not op.get_attr("is_training"):
                continue  # inference mode: the other branch of a cond may still hold the training op
            layer = _Layer(op.name, fused=op, x=op.inputs[0], route=(*conds.origin(op), *route))
            return layer, MEAN if tensor.value_index == 1 else VARIANCE
        found = _moments(tensor)
        if found is not None:
            key, kind, x = found
            layer = _Layer(key, x=x, route=(*conds.origin(tensor.op), *route))
            layer.moments[kind] = tensor
            return layer, kind
        if op.type in UPDATE_ARITHMETIC:
            queue.extend((source, route) for source in op.inputs)
        elif op.type in COND_OPS and not conds.constant(op, tensor.value_index):
            for value, outputs in conds.branches(op):
                if tensor.value_index < len(outputs):
                    queue.append((outputs[tensor.value_index], (*route, (op, value))))
    return None


def find_layers(graph, conds: _Conds) -> list[_Layer]:
    """Every BatchNorm computation whose batch statistics update a moving mean and a moving variance, with
    the updates inside conds' branches copied into the graph first."""
    conds.inline_updates()
    layers: dict[str, _Layer] = {}
    for op in graph.get_operations():
        if op.type not in UPDATE_OPS or len(op.inputs) < 2:
            continue
        variable = _variable_of(op.inputs[0])
        found = _batch_statistic(op, conds) if variable else None
        if found is None or variable is None:
            continue
        candidate, kind = found
        layer = layers.setdefault(candidate.key, candidate)
        layer.moments.update({k: v for k, v in candidate.moments.items() if k not in layer.moments})
        layer.route += tuple(step for step in candidate.route if step not in layer.route)
        layer.variables.setdefault(kind, set()).add(variable)
    return list(layers.values())


def _one_variable(layer: _Layer, kind: str, where: str) -> str:
    """The moving statistic a layer's statistic updates; zero-debiasing adds helpers (`.../biased`), which
    the statistic's own name (`moving_mean`, `moving_variance`) tells apart."""
    names = layer.variables.get(kind, set())
    if len(names) > 1:
        leaf = STATISTIC_LEAVES[0 if kind == MEAN else 1]
        names = {name for name in names if name.rsplit("/", 1)[-1] == leaf} or names
    if len(names) != 1:
        what = "no" if not names else f"{len(names)} ({', '.join(sorted(names)[:3])})"
        raise RecalibrateError(f"{where}: BatchNorm {layer.key} updates {what} moving {kind} variables")
    return next(iter(names))


class GraphRunner:
    """Imports the training graph, restores what the checkpoint holds, and fetches batch statistics."""

    def __init__(self, tf, checkpoint: Checkpoint, meta_graph: str, input_name: str | None, feeds: dict) -> None:
        self._tf = tf
        self._meta = meta_graph
        tf1 = tf.compat.v1
        self._graph = tf.Graph()
        with self._graph.as_default():
            self._import(meta_graph)
            self._conds = _Conds(tf, self._graph)
            found = find_layers(self._graph, self._conds)
            if not found:
                raise RecalibrateError(self._no_training_layers())
            self._found = sorted(found, key=lambda layer: _one_variable(layer, MEAN, meta_graph))
            self.layers = tuple(self._statistics(layer) for layer in self._found)
            self._fetches = [self._layer_fetches(layer) for layer in self._found]
            self._input = self._input_tensor(input_name, feeds)
            self._feeds = self._extra_feeds(feeds)
            self._feeds.update(self._branch_feeds())
            restore, initialise = self._split_variables(checkpoint)
            self._session = tf1.Session(graph=self._graph)
        try:
            with self._graph.as_default():
                self._session.run(tf1.variables_initializer(initialise))
                self._session.run(tf1.local_variables_initializer())
                tf1.train.Saver(var_list=restore).restore(self._session, checkpoint.resolved.location)
        except tf.errors.OpError as error:
            self.close()
            raise ModelError(
                f"{checkpoint.resolved.location}: TensorFlow cannot restore it into {meta_graph} "
                f"({type(error).__name__}: {first_line(error)})"
            ) from None

    def _import(self, meta_graph: str) -> None:
        from ckptdoctor.verify import import_meta_graph

        import_meta_graph(self._tf, meta_graph)

    def _no_training_layers(self) -> str:
        conds = self._conds
        if conds.unfollowed is not None or conds.holds_batchnorm():
            why = f" ({conds.unfollowed})" if conds.unfollowed else ""
            return (
                f"{self._meta}: its graph functions (tf.cond of control flow v2) update variables or run BatchNorm "
                f"in training mode, but recalibrate cannot follow them to a layer's batch statistics{why}"
            )
        ops = self._graph.get_operations()
        evaluation = any(op.type in FUSED_OPS and not op.get_attr("is_training") for op in ops) or any(
            op.type in VARIABLE_OPS and op.name.rsplit("/", 1)[-1] in STATISTIC_LEAVES for op in ops
        )
        if evaluation:
            return (
                f"{self._meta}: an evaluation graph: its BatchNorm layers run in inference mode (is_training=False) "
                "and compute no batch statistics; recalibrate needs the training graph (the PREFIX.meta "
                "tf.train.Saver writes while training, or export_meta_graph of the model built with is_training=True)"
            )
        return f"{self._meta}: no BatchNorm layer updating moving statistics in this graph"

    def _statistics(self, layer: _Layer) -> LayerStatistics:
        mean = _one_variable(layer, MEAN, self._meta)
        variance = _one_variable(layer, VARIANCE, self._meta)
        return LayerStatistics(mean.rpartition("/")[0] or mean, mean, variance)

    def _layer_fetches(self, layer: _Layer) -> dict[str, Any]:
        tf = self._tf
        with tf.name_scope("ckptdoctor_recalibrate"):
            values = tf.size(layer.x, out_type=tf.int64)
            if layer.fused is not None:
                op = layer.fused
                factor = op.get_attr("exponential_avg_factor") if op.type == "FusedBatchNormV3" else 1.0
                fetches = {"mean": op.outputs[1], "variance": op.outputs[2], "values": values, "factor": factor}
                if factor != 1.0:  # the outputs blend in the running statistics the op was given
                    fetches.update(running_mean=op.inputs[3], running_variance=op.inputs[4])
                return fetches
            if MEAN not in layer.moments or VARIANCE not in layer.moments:
                raise RecalibrateError(f"{self._meta}: BatchNorm {layer.key} lacks its mean or variance moments")
            return {
                "mean": layer.moments[MEAN],
                "variance": layer.moments[VARIANCE],
                "values": values,
            }

    def _tensor(self, name: str, what: str):
        try:
            return self._graph.get_tensor_by_name(name if ":" in name else f"{name}:0")
        except (KeyError, ValueError):
            raise ConfigError(f"{what} {name}: no such tensor in {self._meta}") from None

    def _input_tensor(self, input_name: str | None, feeds: dict):
        """The placeholder a single-array batch goes to: --input, else the graph's one float placeholder."""
        if input_name is not None:
            return self._tensor(input_name, "--input")
        candidates = [
            op.outputs[0]
            for op in self._graph.get_operations()
            if op.type == "Placeholder"
            and op.outputs[0].dtype.is_floating
            and op.name not in feeds
            and not self._conds.is_copy(op)  # a copied branch's argument, mapped to the cond's input
        ]
        if len(candidates) == 1:
            return candidates[0]
        shown = ", ".join(tensor.op.name for tensor in candidates[:5])
        return f"{self._meta}: {len(candidates)} float placeholders ({shown or 'none'}); name the input with --input"

    def _extra_feeds(self, feeds: dict) -> dict:
        import numpy as np

        return {
            tensor: np.asarray(value, dtype=tensor.dtype.as_numpy_dtype)
            for name, value in feeds.items()
            for tensor in [self._tensor(name, "--feed")]
        }

    def _branch_feeds(self) -> dict:
        """The predicate of each cond a layer's statistics came through, fed the value selecting that branch
        (the cond in the graph runs its training branch, so deeper layers see training-mode activations). A
        predicate inside a copied branch is left alone: the copy is fetched directly, never through its cond."""
        chosen: dict[Any, bool] = {}
        for layer in self._found:
            for op, value in layer.route:
                predicate = op.inputs[0]
                if self._conds.is_copy(predicate.op):
                    continue
                if chosen.setdefault(predicate, value) != value:
                    raise RecalibrateError(
                        f"{self._meta}: {predicate.op.name} selects the training branch of one tf.cond when "
                        "true and of another when false; recalibrate cannot run both"
                    )
        for predicate, value in chosen.items():
            given = self._feeds.get(predicate)
            if given is not None and bool(given) != value:
                raise ConfigError(
                    f"--feed {predicate.op.name}={str(bool(given)).lower()}: BatchNorm runs in training mode "
                    f"when it is {str(value).lower()}"
                )
        return chosen

    def _split_variables(self, checkpoint: Checkpoint) -> tuple[list, list]:
        """The graph's variables the checkpoint holds (restored) and those it lacks (initialised: the
        statistics themselves and optimizer slots, which training-mode BatchNorm never reads)."""
        stored = {info.name: info for info in checkpoint.reader.tensors()}
        restore, initialise = [], []
        for variable in self._tf.compat.v1.global_variables():
            info = variable._save_slice_info  # a part of a partitioned variable is restored from its whole
            key = info.full_name if info else variable.op.name
            if key not in stored:
                initialise.append(variable)
                continue
            expected = tuple(info.full_shape) if info else tuple(variable.shape.as_list())
            if expected != stored[key].shape:
                raise ModelError(
                    f"{checkpoint.reader.location}: {key} is {list(stored[key].shape)} in the checkpoint but "
                    f"{list(expected)} in {self._meta}"
                )
            restore.append(variable)
        if not restore:
            raise ModelError(f"{self._meta}: none of the graph's variables is in {checkpoint.reader.location}")
        return restore, initialise

    def _feed(self, batch: Batch) -> dict:
        feed = dict(self._feeds)
        if isinstance(batch, dict):
            for name, array in batch.items():
                feed[self._tensor(name, "input")] = array
        elif isinstance(self._input, str):
            raise DataError(self._input)
        else:
            feed[self._input] = batch
        return feed

    def run(self, batch: Batch, rows: int) -> list[BatchMoments]:
        tf = self._tf
        fetches = [{k: v for k, v in f.items() if k != "factor"} for f in self._fetches]
        try:
            results = self._session.run(fetches, self._feed(batch))
        except tf.errors.OpError as error:
            hint = " (give placeholders with --feed NAME=VALUE)" if "placeholder" in error.message else ""
            raise RecalibrateError(
                f"{self._meta}: TensorFlow failed on a batch ({type(error).__name__}: {first_line(error)}){hint}"
            ) from None
        except ValueError as error:  # a batch whose shape does not fit the placeholder
            raise DataError(f"{self._meta}: the batch does not fit the graph's input ({first_line(error)})") from None
        return [_moments_of(result, spec.get("factor")) for result, spec in zip(results, self._fetches, strict=True)]

    def close(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()
            self._session = None


def _moments_of(result: dict, factor: float | None) -> BatchMoments:
    """The batch mean and biased variance from what the graph returned for one layer."""
    import numpy as np

    mean = np.asarray(result["mean"], dtype=np.float64).reshape(-1)
    variance = np.asarray(result["variance"], dtype=np.float64).reshape(-1)
    channels = mean.size
    values = int(result["values"]) // max(channels, 1)
    if factor is not None:  # the fused op
        if factor != 1.0:
            running_mean = np.asarray(result["running_mean"], dtype=np.float64).reshape(-1)
            running_variance = np.asarray(result["running_variance"], dtype=np.float64).reshape(-1)
            mean = (mean - (1.0 - factor) * running_mean) / factor
            variance = (variance - (1.0 - factor) * running_variance) / factor
        variance = variance * ((values - 1) / values) if values > 1 else np.zeros_like(variance)
    return BatchMoments(mean, np.maximum(variance, 0.0), values)
