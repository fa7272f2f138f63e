"""Group stored tensors into BatchNorm layers by scope, with or without gamma and moving statistics."""

from __future__ import annotations

import re

from ckptdoctor.analysis.roles import object_path
from ckptdoctor.model import BatchNormLayer, Role, Variable

PARTS = ("gamma", "beta", "moving_mean", "moving_variance")

# A scope with only gamma/beta is a BatchNorm layer only if its name says so: LayerNorm and
# GroupNorm scopes also hold gamma and beta, and must never be told they lack moving statistics.
_BN_NAME = re.compile(r"batch_?norm|(^|[^a-z])bn([^a-z]|$)", re.IGNORECASE)
_OTHER_NORM = re.compile(r"layer_?norm|group_?norm|instance_?norm", re.IGNORECASE)


def _looks_like_batchnorm(scope: str) -> bool:
    last = scope.rsplit("/", 1)[-1]
    return bool(_BN_NAME.search(last)) and not _OTHER_NORM.search(scope)


def group_batchnorm(variables: tuple[Variable, ...]) -> tuple[BatchNormLayer, ...]:
    scopes: dict[str, dict[str, str]] = {}
    for var in variables:
        if var.role not in (Role.WEIGHT, Role.BN_STATISTIC):
            continue
        scope, _, leaf = object_path(var.name).rpartition("/")
        if leaf in PARTS:
            scopes.setdefault(scope, {})[leaf] = var.name
    layers = []
    for scope, parts in scopes.items():
        has_statistics = "moving_mean" in parts or "moving_variance" in parts
        if has_statistics or _looks_like_batchnorm(scope):
            layers.append(BatchNormLayer(layer=scope, **parts))
    return tuple(sorted(layers, key=lambda layer: layer.layer))
