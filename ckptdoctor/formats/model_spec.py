"""What a model expects to restore, read without TensorFlow: a TF1 meta graph or a Keras `.keras` file.

`match` compares these with a checkpoint. A meta graph lists its variables in the `variables` collection
(formats/meta_graph.py); a `.keras` archive's config.json names the layers and its model.weights.h5 holds
one variable per expected weight, whose dtype and shape are what the model builds."""

from __future__ import annotations

from ckptdoctor.errors import CheckpointError, ModelError
from ckptdoctor.model import Storage
from ckptdoctor.typed import NamedTuple

# A model with more variables than this is not read: the matching search is linear in it, but the report
# and assignment map are not meant for millions of entries.
MAX_MODEL_VARIABLES = 500_000


class ModelVariable(NamedTuple):
    """A variable the model restores: the name it looks up (a TF1 checkpoint key, a Keras `layer/weight`
    path), dtype, and shape (-1 for a dimension left open, None for an unknown rank)."""

    name: str
    dtype: str
    shape: tuple[int, ...] | None
    trainable: bool = True


def keras_file_variables(path: str) -> tuple[ModelVariable, ...]:
    """The weights a saved Keras model (`.keras`, or a full-model `.h5`) builds, optimizer state left out."""
    from ckptdoctor.formats import open_checkpoint

    try:
        reader, resolved = open_checkpoint(path)
    except CheckpointError as error:
        raise ModelError(str(error)) from None
    try:
        if resolved.storage not in (Storage.ZIP, Storage.HDF5):
            raise ModelError(f"{path}: --model takes a .keras file or package.module:builder, not a checkpoint")
        tensors = [t for t in reader.tensors() if not t.optimizer_state]
        if len(tensors) > MAX_MODEL_VARIABLES:
            raise ModelError(f"{path}: more than {MAX_MODEL_VARIABLES} weights, not read")
        return tuple(ModelVariable(t.path or t.name, t.dtype, t.shape) for t in tensors)
    finally:
        reader.close()
