"""Classify each stored tensor by the role it plays (weight, BN statistic, optimizer slot, EMA, counter)."""

from __future__ import annotations

import re

from ckptdoctor import dtypes
from ckptdoctor.formats.object_keys import ATTRIBUTE_SUFFIX, OBJECT_GRAPH_KEY
from ckptdoctor.model import BATCHNORM_STATISTICS, Role, TensorInfo, Variable

# TF1 optimizers append their slot name to the variable's name: `conv/weights/Momentum`.
SLOT_SUFFIXES = frozenset(
    {
        "Momentum",
        "Adam",
        "Adam_1",
        "RMSProp",
        "RMSProp_1",
        "Adagrad",
        "AdagradDA",
        "AdagradDA_1",
        "Ftrl",
        "Ftrl_1",
        "Adadelta",
        "Adadelta_1",
        "ProximalAdagrad",
        "Nadam",
        "Nadam_1",
        "LazyAdam",
        "LazyAdam_1",
        "AdamW",
        "AdamW_1",
    }
)
# Keras-2 optimizers in TF1 graphs keep all state under `training/<Optimizer>/...`.
OPTIMIZER_SCOPES = frozenset(
    {"Adagrad", "Adam", "Adamax", "Adadelta", "Ftrl", "Nadam", "RMSprop", "SGD", "AdamW", "Lion"}
)
OPTIMIZER_STATE = frozenset({"beta1_power", "beta2_power"})
COUNTERS = frozenset({"global_step", "save_counter", "iter", "iterations", "_iterations", "step"})
BN_STATISTICS = frozenset(BATCHNORM_STATISTICS)
EMA = "ExponentialMovingAverage"
# A shadow's recorded name in a TF2 object graph: eager TF numbers shadows of like-named variables (`_1`).
EMA_SEGMENT = EMA + r"(_\d+)?"


def shadowed_name(full_name: str | None) -> str | None:
    """The recorded name of the variable a TF2 shadow averages (`dense/kernel/ExponentialMovingAverage` ->
    `dense/kernel`), or None where the name is not a shadow's."""
    if not full_name or EMA not in full_name:  # most names, answered without the pattern
        return None
    parts = full_name.split("/")
    at = next((i for i, part in enumerate(parts) if re.fullmatch(EMA_SEGMENT, part)), None)
    return "/".join(parts[:at]) if at else None


def object_path(name: str) -> str:
    """The variable's path with the TF2 object-graph attribute suffix removed."""
    return name[: -len(ATTRIBUTE_SUFFIX)] if name.endswith(ATTRIBUTE_SUFFIX) else name


# Keras metric state (a Mean's total and count): `metrics/...` in Keras 3 files, `keras_api/metrics/N/...` in the
# object graph of a tf.keras SavedModel. It is neither a weight nor restored by evaluation.
METRIC_SCOPES = (("metrics",), ("keras_api", "metrics"))


def _is_metric_state(parts: list[str]) -> bool:
    return any(tuple(parts[: len(scope)]) == scope and len(parts) > len(scope) for scope in METRIC_SCOPES)


def analysis_path(info: TensorInfo) -> str:
    return info.path or object_path(info.name)


def role_of(info: TensorInfo) -> Role:
    path = analysis_path(info)
    parts = path.split("/")
    leaf = parts[-1]
    dtype = dtypes.BY_NAME.get(info.dtype)
    is_float = bool(dtype and dtype.is_float)
    if info.name == OBJECT_GRAPH_KEY:
        return Role.OTHER
    if info.slot_of is not None or "/.OPTIMIZER_SLOT/" in path:
        return Role.OPTIMIZER_SLOT
    # A TF2 object graph keeps a shadow wherever the script tracked it; its recorded name still says what it is.
    if EMA in parts or shadowed_name(info.full_name) is not None:
        return Role.EMA
    if leaf in COUNTERS or (not is_float and info.shape == () and info.dtype.startswith(("int", "uint"))):
        return Role.COUNTER
    if (len(parts) > 1 and leaf in SLOT_SUFFIXES) or leaf in OPTIMIZER_STATE:
        return Role.OPTIMIZER_SLOT
    if len(parts) > 2 and parts[0] == "training" and parts[1] in OPTIMIZER_SCOPES:
        return Role.OPTIMIZER_SLOT
    if info.optimizer_state or parts[0] == "optimizer":
        return Role.OPTIMIZER_SLOT
    if _is_metric_state(parts):
        return Role.OTHER
    if leaf in BN_STATISTICS and is_float:
        return Role.BN_STATISTIC
    return Role.WEIGHT if is_float else Role.OTHER


def owner_path(info: TensorInfo, role: Role) -> str:
    """The path of the variable a tensor belongs to: a slot or EMA names the variable it shadows."""
    if info.slot_of is not None:
        return info.slot_of
    path = analysis_path(info)
    if role is not Role.OPTIMIZER_SLOT and role is not Role.EMA:  # most tensors: their own path
        return path
    if role is Role.OPTIMIZER_SLOT and "/.OPTIMIZER_SLOT/" in path:
        return path.split("/.OPTIMIZER_SLOT/")[0]
    parts = path.split("/")
    if role is Role.EMA and EMA in parts:
        return "/".join(parts[: parts.index(EMA)])
    if role is Role.OPTIMIZER_SLOT and len(parts) > 1 and parts[-1] in SLOT_SUFFIXES:
        return "/".join(parts[:-1])
    return path


def classify(tensors: tuple[TensorInfo, ...]) -> tuple[Variable, ...]:
    out = []
    for info in tensors:
        role = role_of(info)
        layer = owner_path(info, role).rpartition("/")[0]
        path = analysis_path(info)
        out.append(Variable(info.name, info.dtype, info.shape, info.nbytes, role, layer, path, info.full_name))
    return tuple(out)
