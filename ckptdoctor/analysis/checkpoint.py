"""An opened checkpoint with its variables classified and its BatchNorm layers found."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.analysis.batchnorm import group_batchnorm
from ckptdoctor.analysis.roles import classify
from ckptdoctor.formats import CheckpointReader, Resolved, open_checkpoint
from ckptdoctor.model import BatchNormLayer, CheckpointError, Variable

if TYPE_CHECKING:
    import numpy as np

    from ckptdoctor.dtypes import Numbers


class Checkpoint:
    """An opened checkpoint: its reader, what its path resolved to, its classified variables and BatchNorm
    layers. A plain class, not a record: it caches what it derives (`subjects`, the layer lookups)."""

    def __init__(
        self,
        reader: CheckpointReader,
        resolved: Resolved,
        variables: tuple[Variable, ...],
        batchnorm: tuple[BatchNormLayer, ...],
    ) -> None:
        self.reader = reader
        self.resolved = resolved
        self.variables = variables
        self.batchnorm = batchnorm

    def layer_name(self, layer: BatchNormLayer) -> str:
        """The layer's name as its framework knows it (`bn_default`), to match layers across formats: from the
        first of its variables, in stored order, whose full name the file records."""
        keys = (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)
        named = [self._full_names[key] for key in keys if key in self._full_names]
        return min(named)[1].rpartition("/")[0] if named else layer.layer

    @cached_property
    def _full_names(self) -> dict[str, tuple[int, str]]:
        """Each variable's stored position and full name, where the file records one: looking a layer's up in
        the variables one by one made matching all layers quadratic (25,000 layers of 100,000 tensors)."""
        found: dict[str, tuple[int, str]] = {}
        for position, v in enumerate(self.variables):
            if v.full_name:
                found.setdefault(v.name, (position, v.full_name))
        return found

    @cached_property
    def subjects(self) -> dict[str, str]:
        """Each stored tensor as `inspect` and `check` show it: the framework's full name where the file records
        one that is unique (`bn_default/moving_mean` for `model/_operations/2/moving_mean/.ATTRIBUTES/
        VARIABLE_VALUE`), else its model path (`bn_default/moving_mean` for a `.weights.h5`'s `layers/.../vars/2`)."""
        full_names = Counter(v.full_name for v in self.variables if v.full_name)
        return {v.name: v.full_name if v.full_name and full_names[v.full_name] == 1 else v.path for v in self.variables}

    @cached_property
    def _batchnorm_by_path(self) -> dict[str, BatchNormLayer]:
        return {layer.layer: layer for layer in self.batchnorm}

    @cached_property
    def _batchnorm_by_name(self) -> dict[str, BatchNormLayer]:
        return {self.layer_name(layer): layer for layer in self.batchnorm}

    def find_layer(self, layer: BatchNormLayer, other: Checkpoint) -> BatchNormLayer | None:
        """This checkpoint's BatchNorm layer that is `layer` of checkpoint `other`: the one at the same path,
        else the one with the same framework name (a Keras file and a TF checkpoint of one model)."""
        same_path = self._batchnorm_by_path.get(layer.layer)
        return same_path if same_path is not None else self._batchnorm_by_name.get(other.layer_name(layer))

    def values(self, name: str) -> np.ndarray | None:
        """A tensor's values, or None where its bytes cannot be read (that damage is its own finding)."""
        try:
            return self.reader.read(name)
        except (CheckpointError, KeyError, ValueError):
            return None

    def numbers(self, name: str) -> Numbers | None:
        """A real-valued tensor's elements as plain numbers (see `CheckpointReader.numbers`), or None where its
        bytes cannot be read or it holds none."""
        try:
            return self.reader.numbers(name)
        except (CheckpointError, KeyError, ValueError):
            return None


@contextmanager
def opened(path: str | os.PathLike[str] | Resolved) -> Iterator[Checkpoint]:
    """Open and classify a checkpoint; raises CheckpointError when it cannot be read at all."""
    reader, resolved = open_checkpoint(path)
    try:
        variables = classify(reader.tensors())
        yield Checkpoint(reader, resolved, variables, group_batchnorm(variables, reader.layers()))
    finally:
        reader.close()
