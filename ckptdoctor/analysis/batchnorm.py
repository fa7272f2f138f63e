"""Group stored tensors into BatchNorm layers by scope, with or without gamma and moving statistics."""

from __future__ import annotations

import re

from ckptdoctor.model import BATCHNORM_PARTS, BATCHNORM_STATISTICS, BatchNormLayer, LayerConfig, Role, Variable

PARTS = BATCHNORM_PARTS  # the name report/ imports it by

# A scope with only gamma/beta is a BatchNorm layer only if its name says so: LayerNorm and
# GroupNorm scopes also hold gamma and beta, and must never be told they lack moving statistics. (Patterns
# compiled by `re` when first asked: a layer that holds its statistics never asks, and compiling them took
# ~0.5 ms of every listing.)
_BN_NAME = r"batch_?norm|(^|[^a-z])bn([^a-z]|$)"
_OTHER_NORM = r"layer_?norm|group_?norm|instance_?norm"


def _looks_like_batchnorm(scopes: set[str]) -> bool:
    """True when a scope's own name (or the framework name of its variables' scope) says BatchNorm."""
    lasts = [scope.rsplit("/", 1)[-1] for scope in scopes]
    return any(re.search(_BN_NAME, last, re.IGNORECASE) for last in lasts) and not any(
        re.search(_OTHER_NORM, scope, re.IGNORECASE) for scope in scopes
    )


def group_batchnorm(
    variables: tuple[Variable, ...], configs: tuple[LayerConfig, ...] = ()
) -> tuple[BatchNormLayer, ...]:
    """BatchNorm layers by scope; a layer the model configuration declares counts even with no variables."""
    scopes: dict[str, dict[str, str]] = {config.path: {} for config in configs if config.is_batchnorm}
    declared = set(scopes)
    names: dict[str, set[str]] = {}
    for var in variables:
        if var.role not in (Role.WEIGHT, Role.BN_STATISTIC):
            continue
        scope, _, leaf = var.path.rpartition("/")
        if leaf in BATCHNORM_PARTS:
            scopes.setdefault(scope, {})[leaf] = var.name
            names.setdefault(scope, {scope}).add(var.full_name.rpartition("/")[0] if var.full_name else scope)
    layers = []
    for scope, parts in scopes.items():
        has_statistics = any(statistic in parts for statistic in BATCHNORM_STATISTICS)
        if scope in declared or has_statistics or _looks_like_batchnorm(names[scope]):
            layers.append(BatchNormLayer(layer=scope, **parts))
    return tuple(sorted(layers, key=lambda layer: layer.layer))
