"""Write patched Keras files: `.weights.h5`, legacy `.h5`, and `.keras` archives, via a temp file renamed."""

from __future__ import annotations

import dataclasses
import os
import shutil
import zipfile
from pathlib import Path

from ckptdoctor.analysis.checkpoint import Checkpoint
from ckptdoctor.formats.keras_common import import_h5py, string_list_attr
from ckptdoctor.formats.keras_h5 import KerasH5Reader
from ckptdoctor.formats.keras_v3 import WEIGHTS_MEMBER, KerasV3Reader
from ckptdoctor.model import BatchNormLayer, CheckpointError
from ckptdoctor.names import encode_name
from ckptdoctor.writer.atomic import atomic_output, create_exclusive, temp_beside

BN_ORDER = ("gamma", "beta", "moving_mean", "moving_variance")


def _layers(target: Checkpoint) -> dict[str, BatchNormLayer]:
    return {layer.layer: layer for layer in target.batchnorm}


def _patch_v3_file(path: str, reader: KerasV3Reader, target: Checkpoint, additions, values) -> list:
    """Add each statistic at the index Keras expects: after the layer's parameters, mean before variance."""
    h5py = import_h5py()
    layers, placed = _layers(target), []
    with h5py.File(path, "r+") as file:
        for addition in additions:
            layer = layers[addition.layer]
            group_name = reader.vars_groups.get(addition.layer)
            if group_name is None:
                raise CheckpointError(f"{reader.location}: no weight group for layer {addition.layer}")
            params = sum(1 for part in ("gamma", "beta") if getattr(layer, part))
            index = params + (0 if addition.statistic == "moving_mean" else 1)
            key = f"{group_name}/{index}"
            file[group_name].create_dataset(str(index), data=values[addition.donor_key])
            placed.append(dataclasses.replace(addition, key=key))
    return placed


def _patch_legacy_file(path: str, reader: KerasH5Reader, target: Checkpoint, additions, values) -> list:
    """Add datasets beside the layer's parameters, named like them, and list them in `weight_names`."""
    h5py = import_h5py()
    import numpy as np

    placed = []
    root_name = reader.weights_root.name
    with h5py.File(path, "r+") as file:
        for addition in additions:
            group = file[root_name][addition.layer.split("/")[0]]
            names = string_list_attr(group, "weight_names")
            like = next((n for n in names if n.split(":")[0].rsplit("/", 1)[-1] in ("gamma", "beta")), None)
            device = ":" + like.rsplit(":", 1)[1] if like and ":" in like else ""
            scope = like.split(":")[0].rsplit("/", 1)[0] if like else addition.layer
            name = f"{scope}/{addition.statistic}{device}"
            group.create_dataset(name, data=values[addition.donor_key])
            names.append(name)
            names.sort(
                key=lambda n: (
                    BN_ORDER.index(n.split(":")[0].rsplit("/", 1)[-1])
                    if n.split(":")[0].rsplit("/", 1)[-1] in BN_ORDER
                    else -1
                )
            )
            old = group.attrs.get("weight_names")
            if old is not None and getattr(old, "dtype", None) is not None and old.dtype.kind == "S":
                group.attrs["weight_names"] = np.array([encode_name(n) for n in names])  # keep Keras 2's bytes
            else:
                group.attrs["weight_names"] = np.array(names, dtype=h5py.string_dtype())
            placed.append(dataclasses.replace(addition, key=group[name].name.lstrip("/")))
    return placed


def _replace_member(archive: str, out: str, member: str, data_path: str) -> None:
    """A new zip with `member` replaced from a file and every other member, and the order, unchanged."""
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(out, "w") as new:
        for info in old.infolist():
            if info.filename == member:
                with open(data_path, "rb") as data, new.open(info, "w") as target:
                    shutil.copyfileobj(data, target, 8 << 20)
            else:
                with old.open(info) as source, new.open(info, "w") as target:
                    shutil.copyfileobj(source, target, 8 << 20)


def write(target: Checkpoint, donor: Checkpoint, additions, out: str):
    reader = target.reader
    values = {a.donor_key: donor.reader.read(a.donor_key) for a in additions}
    with atomic_output(out) as temp:
        if isinstance(reader, KerasV3Reader) and reader.format == "keras-zip":
            # The scratch copy of the weights is named and removed like every other temporary of this output.
            weights = temp_beside(out)
            try:
                with (
                    zipfile.ZipFile(reader.location) as archive,
                    archive.open(WEIGHTS_MEMBER) as member,
                    os.fdopen(create_exclusive(weights), "wb") as copy,
                ):
                    shutil.copyfileobj(member, copy, 8 << 20)
                placed = _patch_v3_file(weights, reader, target, additions, values)
                placed = [dataclasses.replace(a, key=f"{WEIGHTS_MEMBER}:{a.key}") for a in placed]
                _replace_member(reader.location, temp, WEIGHTS_MEMBER, weights)
            finally:
                Path(weights).unlink(missing_ok=True)
        else:
            with open(reader.location, "rb") as source, os.fdopen(create_exclusive(temp), "wb") as copy:
                shutil.copyfileobj(source, copy, 8 << 20)
            patcher = _patch_v3_file if isinstance(reader, KerasV3Reader) else _patch_legacy_file
            placed = patcher(temp, reader, target, additions, values)
    return (out,), placed
