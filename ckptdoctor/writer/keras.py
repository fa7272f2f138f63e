"""Edited Keras files: `.weights.h5`, legacy `.h5` and `.keras` archives, copied and edited in a temporary file.

Each writer states what it needs from its reader (`KerasV3Source`, `KerasLegacySource`) and decides at
`prepare` where every new dataset goes; `write` copies the source beside the output, edits the copy with
h5py, and renames it into place."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ckptdoctor.errors import OutputError
from ckptdoctor.formats.keras_common import import_h5py, string_list_attr
from ckptdoctor.formats.keras_v3 import WEIGHTS_MEMBER
from ckptdoctor.model import BATCHNORM_PARTS, BatchNormLayer, Storage
from ckptdoctor.names import encode_name
from ckptdoctor.writer.atomic import atomic_output, create_exclusive, temp_beside
from ckptdoctor.writer.base import (
    Edits,
    NewTensor,
    Placed,
    Progress,
    UnsupportedEdit,
    Written,
    check_replacements,
    refuse_unsupported,
    values_of,
)

if TYPE_CHECKING:
    import numpy as np

    from ckptdoctor.analysis.checkpoint import Checkpoint

COPY_CHUNK = 8 << 20


@runtime_checkable
class KerasV3Source(Protocol):
    """What the Keras 3 writers need from their reader: where each layer's variables live."""

    @property
    def location(self) -> str: ...

    @property
    def vars_groups(self) -> Mapping[str, str]:
        """Layer path -> HDF5 path of the layer's `vars` group, whose datasets `0`, `1`, … are its variables."""
        ...


@runtime_checkable
class KerasLegacySource(Protocol):
    """What the legacy Keras writer needs from its reader: the group that holds one group per layer."""

    @property
    def location(self) -> str: ...

    @property
    def weights_root(self) -> Any:
        """The h5py group (`/model_weights` or the root) whose layer groups list their `weight_names`."""
        ...


@dataclass(frozen=True)
class _NewDataset:
    tensor: NewTensor
    path: str  # the dataset's HDF5 path in the weights file
    values: np.ndarray


@dataclass(frozen=True)
class _WeightNames:
    """A legacy layer group's `weight_names` once the new datasets are listed, kept as bytes where they were."""

    group: str
    names: tuple[str, ...]
    as_bytes: bool


@dataclass(frozen=True)
class KerasPlan:
    """A Keras file to copy and edit: datasets to create, datasets to overwrite, attributes to rewrite."""

    location: str
    member: str | None  # the weights member of a .keras archive; None for an HDF5 file
    new: tuple[_NewDataset, ...]
    replaced: tuple[tuple[str, np.ndarray], ...]
    weight_names: tuple[_WeightNames, ...] = ()

    def write(self, out: str, previous: Sequence[Path], progress: Progress | None = None) -> Written:
        """`previous` is at most the file at `out`, which the rename replaces."""
        with atomic_output(out) as temp:
            if self.member is None:
                with open(self.location, "rb") as source, os.fdopen(create_exclusive(temp), "wb") as copy:
                    shutil.copyfileobj(source, copy, COPY_CHUNK)
                self._edit(temp)
            else:
                # The scratch copy of the weights is named and removed like every other temporary of this output.
                weights = temp_beside(out)
                try:
                    with (
                        zipfile.ZipFile(self.location) as archive,
                        archive.open(self.member) as member,
                        os.fdopen(create_exclusive(weights), "wb") as copy,
                    ):
                        shutil.copyfileobj(member, copy, COPY_CHUNK)
                    self._edit(weights)
                    _replace_member(self.location, temp, self.member, weights)
                finally:
                    Path(weights).unlink(missing_ok=True)
        prefix = f"{self.member}:" if self.member else ""
        placed = tuple(Placed(new.tensor.layer, new.tensor.variable, prefix + new.path) for new in self.new)
        return Written((out,), placed)

    def _edit(self, path: str) -> None:
        h5py = import_h5py()
        import numpy as np

        with h5py.File(path, "r+") as file:
            for new in self.new:
                file.create_dataset(new.path, data=new.values)
            for name, values in self.replaced:
                file[name][...] = values
            for listed in self.weight_names:
                if listed.as_bytes:  # Keras 2 wrote bytes: keep them bytes
                    value = np.array([encode_name(name) for name in listed.names])
                else:
                    value = np.array(listed.names, dtype=h5py.string_dtype())
                file[listed.group].attrs["weight_names"] = value


def _replace_member(archive: str, out: str, member: str, data_path: str) -> None:
    """A new zip with `member` replaced from a file and every other member, and the order, unchanged."""
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(out, "w") as new:
        for info in old.infolist():
            if info.filename == member:
                with open(data_path, "rb") as data, new.open(info, "w") as target:
                    shutil.copyfileobj(data, target, COPY_CHUNK)
            else:
                with old.open(info) as source, new.open(info, "w") as target:
                    shutil.copyfileobj(source, target, COPY_CHUNK)


def _batchnorm_layer(source: Checkpoint, tensor: NewTensor) -> BatchNormLayer:
    """Keras files get only BatchNorm variables added: elsewhere the weight order is the layer's own code."""
    layer = next((layer for layer in source.batchnorm if layer.layer == tensor.layer), None)
    if layer is None or tensor.variable not in BATCHNORM_PARTS:
        raise UnsupportedEdit(
            f"{source.reader.location}: cannot add {tensor.variable} to {tensor.layer}: "
            "only BatchNorm variables can be added to Keras files"
        )
    return layer


class _SingleFile:
    """A Keras output is one file."""

    def output_path(self, out: str) -> str:
        return out

    def output_files(self, out: str) -> list[str]:
        return [out]

    def existing_outputs(self, out: str) -> list[Path]:
        return [Path(out)] if Path(out).exists() else []


class KerasV3Writer(_SingleFile):
    """Keras 3 weights: a `.weights.h5` file, or (zipped) the weights member of a `.keras` archive."""

    def __init__(self, zipped: bool) -> None:
        self.zipped = zipped
        self.storage = Storage.ZIP if zipped else Storage.HDF5

    def prepare(self, source: Checkpoint, edits: Edits) -> KerasPlan:
        """Each new variable at the index Keras expects: after the layer's parameters, mean before variance."""
        reader = source.reader
        if not isinstance(reader, KerasV3Source):
            raise OutputError(f"{reader.location}: not a Keras 3 weights file")
        refuse_unsupported(edits, reader.location, f"{reader.format} files")
        check_replacements(source, edits)
        new, taken = [], set()
        for tensor in edits.add:
            layer = _batchnorm_layer(source, tensor)
            group = reader.vars_groups.get(tensor.layer)
            if group is None:
                raise OutputError(f"{reader.location}: no weight group for layer {tensor.layer}")
            before = BATCHNORM_PARTS[: BATCHNORM_PARTS.index(tensor.variable)]
            added = {t.variable for t in edits.add if t.layer == tensor.layer}
            index = sum(1 for part in before if getattr(layer, part) or part in added)
            path = f"{group}/{index}"
            if path in taken or getattr(layer, tensor.variable):
                raise OutputError(f"{reader.location}: layer {tensor.layer} already has {tensor.variable}")
            taken.add(path)
            new.append(_NewDataset(tensor, path, values_of(tensor.source)))
        replaced = tuple((r.name, values_of(r.source)) for r in edits.replace)
        return KerasPlan(reader.location, WEIGHTS_MEMBER if self.zipped else None, tuple(new), replaced)


def _bn_rank(name: str) -> int:
    """Where a legacy weight name sorts among its layer's: parameters, then statistics, others first."""
    part = name.split(":")[0].rsplit("/", 1)[-1]
    return BATCHNORM_PARTS.index(part) if part in BATCHNORM_PARTS else -1


class KerasLegacyWriter(_SingleFile):
    """Legacy Keras HDF5 (`model.save('x.h5')`, `save_weights('x.h5')`): datasets listed in `weight_names`."""

    storage = Storage.HDF5

    def prepare(self, source: Checkpoint, edits: Edits) -> KerasPlan:
        """Each new dataset beside the layer's parameters, named like them (scope, `:0` suffix)."""
        reader = source.reader
        if not isinstance(reader, KerasLegacySource):
            raise OutputError(f"{reader.location}: not a legacy Keras HDF5 file")
        refuse_unsupported(edits, reader.location, f"{reader.format} files")
        check_replacements(source, edits)
        root = reader.weights_root
        new, listed = [], {}
        for tensor in edits.add:
            _batchnorm_layer(source, tensor)
            group_name = tensor.layer.split("/")[0]
            if group_name not in root:
                raise OutputError(f"{reader.location}: no weight group for layer {tensor.layer}")
            group = root[group_name]
            if group.name not in listed:
                old = group.attrs.get("weight_names")
                as_bytes = old is not None and getattr(old, "dtype", None) is not None and old.dtype.kind == "S"
                listed[group.name] = (string_list_attr(group, "weight_names"), as_bytes)
            names = listed[group.name][0]
            like = next((n for n in names if n.split(":")[0].rsplit("/", 1)[-1] in ("gamma", "beta")), None)
            device = ":" + like.rsplit(":", 1)[1] if like and ":" in like else ""
            scope = like.split(":")[0].rsplit("/", 1)[0] if like else tensor.layer
            name = f"{scope}/{tensor.variable}{device}"
            if name in names:
                raise OutputError(f"{reader.location}: layer {tensor.layer} already lists {name}")
            names.append(name)
            new.append(_NewDataset(tensor, f"{group.name}/{name}".lstrip("/"), values_of(tensor.source)))
        weight_names = tuple(
            _WeightNames(group, tuple(sorted(names, key=_bn_rank)), as_bytes)
            for group, (names, as_bytes) in listed.items()
        )
        replaced = tuple((r.name, values_of(r.source)) for r in edits.replace)
        return KerasPlan(reader.location, None, tuple(new), replaced, weight_names)
