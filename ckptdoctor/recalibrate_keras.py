"""Keras 3, tf.keras and TF2: each BatchNorm layer's batch statistics, captured by running the model with
`model(x, training=True)`.

Every BatchNormalization layer runs with momentum 0 (and trainable, which training-mode statistics need),
so that its update stores exactly the batch statistics: the moving statistics are zeroed before each batch,
making Keras 3's `v * 0 + batch` and tf.keras's `v - (v - batch) * 1` exact. tf.keras layers also run
non-fused: the fused kernel hands the moving average the Bessel-corrected variance, the non-fused path the
biased one training normalises with. The layers' own settings are restored afterwards.

The model's weights are loaded from a Keras file by name (the Keras path `bn_default/gamma`), and from a TF2
checkpoint by its object graph, the model bound under the root child that holds it (`net` of
`tf.train.Checkpoint(step=..., net=model)`), as verify binds it; either way a checkpoint without statistics
loads too.
"""

from __future__ import annotations

import math

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.analysis.checkpoint import Checkpoint
from ckptdoctor.errors import ModelError, first_line
from ckptdoctor.model import FormatFamily, Role, Storage
from ckptdoctor.recalibrate import BatchMoments, DataError, LayerStatistics, RecalibrateError

if TYPE_CHECKING:
    from typing import Any

    from ckptdoctor.recalibrate import Batch

BATCHNORM_CLASSES = frozenset({"BatchNormalization", "SyncBatchNormalization"})
STATISTIC_LEAVES = ("moving_mean", "moving_variance")


def _name(variable, model) -> str:
    """A Keras variable's path in its model (`bn_default/moving_mean`) as files store it: Keras 3's `path`
    (without the `sequential/` a Sequential model puts first), tf.keras's name without `:0`."""
    name = getattr(variable, "path", None) or variable.name
    name = name.removeprefix(f"{model.name}/")
    return name[:-2] if name.endswith(":0") else name


def _is_batchnorm(layer) -> bool:
    return any(cls.__name__ in BATCHNORM_CLASSES for cls in type(layer).__mro__) and hasattr(layer, "moving_mean")


def _layers(model) -> list:
    flatten = getattr(model, "_flatten_layers", None)
    return list(flatten(include_self=False, recursive=True)) if flatten else list(model.layers)


class KerasRunner:
    def __init__(self, tf, checkpoint: Checkpoint, model_spec: str) -> None:
        from ckptdoctor.verify import load_model_spec

        self._tf = tf
        self._spec = model_spec
        self._model = load_model_spec(model_spec)
        if not getattr(self._model, "built", True) or not self._model.weights:
            raise ModelError(f"{model_spec}: the model is not built (build it in the builder, e.g. with an Input)")
        self._batchnorm = [layer for layer in _layers(self._model) if _is_batchnorm(layer)]
        for layer in self._batchnorm:
            if getattr(layer, "renorm", False) or getattr(layer, "virtual_batch_size", None):
                raise RecalibrateError(
                    f"{model_spec}: {layer.name} uses batch renormalisation or virtual batches, "
                    "whose statistics recalibrate does not compute"
                )
        reader = checkpoint.reader
        if reader.format.family is FormatFamily.TF2 and checkpoint.resolved.storage is Storage.BUNDLE:
            stored_as = self._restore(checkpoint)
        else:
            self._load(checkpoint)
            stored_as = {}
        self.layers = tuple(
            LayerStatistics(
                layer.name,
                stored_as.get(id(layer.moving_mean)) or _name(layer.moving_mean, self._model),
                stored_as.get(id(layer.moving_variance)) or _name(layer.moving_variance, self._model),
            )
            for layer in self._batchnorm
        )
        self._saved = [
            (layer, layer.momentum, layer.trainable, getattr(layer, "fused", None)) for layer in self._batchnorm
        ]
        for layer in self._batchnorm:
            layer.trainable = True  # a frozen BatchNorm runs in inference mode even when called with training=True
            layer.momentum = 0.0
            if getattr(layer, "fused", None):
                layer.fused = False
        self._values_per_sample = [self._spatial_size(layer) for layer in self._batchnorm]

    def _load(self, checkpoint: Checkpoint) -> None:
        """Every model weight from the checkpoint by its Keras path; moving statistics it lacks stay as they
        are (training-mode BatchNorm never reads them)."""
        import numpy as np

        stored: dict[str, str] = {}
        for variable in checkpoint.variables:
            if variable.role not in (Role.WEIGHT, Role.BN_STATISTIC):
                continue
            for alias in (variable.path, variable.full_name):
                if alias:
                    stored.setdefault(alias, variable.name)
        statistics = {_name(layer.moving_mean, self._model) for layer in self._batchnorm}
        statistics |= {_name(layer.moving_variance, self._model) for layer in self._batchnorm}
        location = checkpoint.reader.location
        for weight in self._model.weights:
            name = _name(weight, self._model)
            key = stored.get(name)
            if key is None:
                if name in statistics:
                    continue
                raise ModelError(f"{location}: holds no {name}, which {self._spec} has")
            values = checkpoint.values(key)
            if values is None:
                raise ModelError(f"{location}: {key} cannot be read (ckptdoctor check says why)")
            if tuple(values.shape) != tuple(weight.shape):
                raise ModelError(
                    f"{location}: {key} is {list(values.shape)} but {name} in {self._spec} is {list(weight.shape)}"
                )
            weight.assign(values.astype(np.dtype(_dtype_name(weight))))

    def _restore(self, checkpoint: Checkpoint) -> dict[int, str]:
        """Restore a TF2 checkpoint into the model as TensorFlow binds it; every weight but the moving
        statistics must bind. Returns each BatchNorm statistic's object path in the checkpoint (by the
        variable's id): where the checkpoint lacks it, the path beside its layer's gamma or beta."""
        from ckptdoctor.verify import bound_nodes, choose_root, root_children, variable_leaf

        statistics = {id(layer.moving_mean) for layer in self._batchnorm}
        statistics |= {id(layer.moving_variance) for layer in self._batchnorm}
        required = [weight for weight in self._model.weights if id(weight) not in statistics]
        location = checkpoint.resolved.location
        choice = choose_root(self._tf, self._model, location, root_children(checkpoint.reader), required)
        try:
            status = choice.checkpoint(self._tf, self._model).read(location)
        except Exception as error:  # a shape that differs, damaged bytes: TF's words say which
            raise ModelError(f"{location}: {self._spec} does not restore from it ({first_line(error)})") from None
        status.expect_partial()
        nodes = bound_nodes(status)
        if nodes is None:
            raise ModelError(f"{location}: this TensorFlow does not say which variables a restore bound")
        unbound = [_name(weight, self._model) for weight in required if id(weight) not in nodes]
        if unbound:
            where = f"under {choice.child!r}" if choice.child else "at its root"
            raise ModelError(
                f"{location}: holds no {unbound[0]}, which {self._spec} has (bound {where}; {choice.children_line()})"
            )
        graph = getattr(checkpoint.reader, "object_graph", None)  # None where the graph is damaged
        paths = {variable.node_id: variable.path for variable in graph.variables.values()} if graph else {}
        stored_as: dict[int, str] = {}
        for layer in self._batchnorm:
            sibling = next((paths.get(nodes.get(id(v), -1)) for v in (layer.gamma, layer.beta) if v is not None), None)
            for variable in (layer.moving_mean, layer.moving_variance):
                path = paths.get(nodes.get(id(variable), -1))
                if path is None and sibling:
                    path = f"{sibling.rpartition('/')[0]}/{variable_leaf(variable)}"
                if path:
                    stored_as[id(variable)] = path
        return stored_as

    @staticmethod
    def _spatial_size(layer) -> int:
        """Values per channel per sample: the product of the input's dimensions other than batch and channel
        (1 where the layer's input has unknown spatial dimensions: then each batch weighs by its samples)."""
        try:
            shape = list(layer.input.shape)
        except (AttributeError, ValueError):
            return 1
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        channels = {axis % len(shape) for axis in axes}
        dims = [dim for index, dim in enumerate(shape) if index != 0 and index not in channels]
        return math.prod(dims) if all(isinstance(dim, int) for dim in dims) else 1

    def run(self, batch: Batch, rows: int) -> list[BatchMoments]:
        import numpy as np

        for layer in self._batchnorm:
            for variable in (layer.moving_mean, layer.moving_variance):
                variable.assign(np.zeros(tuple(variable.shape), dtype=np.dtype(_dtype_name(variable))))
        try:
            self._model(batch, training=True)
        except (ValueError, TypeError) as error:
            raise DataError(f"{self._spec}: the batch does not fit the model ({first_line(error)})") from None
        except self._tf.errors.OpError as error:
            raise RecalibrateError(f"{self._spec}: TensorFlow failed on a batch ({first_line(error)})") from None
        return [
            BatchMoments(
                np.asarray(layer.moving_mean.numpy(), dtype=np.float64),
                np.asarray(layer.moving_variance.numpy(), dtype=np.float64),
                rows * per_sample,
            )
            for layer, per_sample in zip(self._batchnorm, self._values_per_sample, strict=True)
        ]

    def close(self) -> None:
        for layer, momentum, trainable, fused in self._saved:
            layer.momentum, layer.trainable = momentum, trainable
            if fused is not None:
                layer.fused = fused
        self._saved = []


def _dtype_name(variable: Any) -> str:
    dtype = variable.dtype
    return getattr(dtype, "name", None) or str(dtype)
