"""Edited Keras files: `.weights.h5`, legacy `.h5` and `.keras` archives, copied and edited in a temporary file.

Each writer states what it needs from its reader (`KerasV3Source`, `KerasLegacySource`) and decides at
`prepare` where every new dataset goes; `write` copies the source beside the output, edits the copy with
h5py, and renames it into place."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.errors import OutputError
from ckptdoctor.formats.keras_common import import_h5py, string_list_attr
from ckptdoctor.formats.keras_v3 import CONFIG_MEMBER, MAX_CONFIG_SIZE, WEIGHTS_MEMBER, read_member
from ckptdoctor.model import BATCHNORM_PARTS, BatchNormLayer, Storage
from ckptdoctor.names import encode_name
from ckptdoctor.typed import NamedTuple
from ckptdoctor.writer.atomic import atomic_output, create_exclusive, temp_beside
from ckptdoctor.writer.base import (
    Edits,
    NewTensor,
    Placed,
    Progress,
    UnsupportedEdit,
    Written,
    check_drops_and_renames,
    check_replacements,
    values_of,
)

if TYPE_CHECKING:
    from typing import IO, Any

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


class _NewDataset(NamedTuple):
    tensor: NewTensor
    path: str  # the dataset's HDF5 path in the weights file
    values: np.ndarray


class _WeightNames(NamedTuple):
    """A legacy layer group's `weight_names` once the new datasets are listed, kept as bytes where they were."""

    group: str
    names: tuple[str, ...]
    as_bytes: bool


class _Pruning(NamedTuple):
    """What leaves the file: whole top-level members (the optimizer's group) and root attributes
    (`training_config`), and legacy layer groups renamed. HDF5 never gives back the space of a deleted
    object, so such an output is rebuilt object by object rather than edited in place."""

    members: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    layers_root: str = ""  # the group holding the legacy layer groups ("" for the root)
    layer_renames: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.members or self.attributes or self.layer_renames)


class KerasPlan(NamedTuple):
    """A Keras file to copy and edit: datasets to create, datasets to overwrite, attributes to rewrite."""

    location: str
    member: str | None  # the weights member of a .keras archive; None for an HDF5 file
    new: tuple[_NewDataset, ...]
    replaced: tuple[tuple[str, np.ndarray], ...]
    weight_names: tuple[_WeightNames, ...] = ()
    pruning: _Pruning = _Pruning()

    def write(self, out: str, previous: Sequence[Path], progress: Progress | None = None) -> Written:
        """`previous` is at most the file at `out`, which the rename replaces."""
        with atomic_output(out) as temp:
            if self.member is None:
                with open(self.location, "rb") as source:
                    self._weights(source, temp, out)
            else:
                # The scratch copy of the weights is named and removed like every other temporary of this output.
                weights = temp_beside(out)
                try:
                    with zipfile.ZipFile(self.location) as archive, archive.open(self.member) as member:
                        self._weights(member, weights, out)
                        config = _without_compile_config(self.location, archive) if self.pruning.members else None
                    _replace_member(self.location, temp, self.member, weights, config)
                finally:
                    Path(weights).unlink(missing_ok=True)
        prefix = f"{self.member}:" if self.member else ""
        placed = tuple(Placed(new.tensor.layer, new.tensor.variable, prefix + new.path) for new in self.new)
        return Written((out,), placed)

    def _weights(self, source: IO[bytes], path: str, out: str) -> None:
        """The edited weights file at `path`: a copy edited in place, rebuilt from a scratch copy when pruned."""
        copy_path = temp_beside(out) if self.pruning else path
        try:
            with os.fdopen(create_exclusive(copy_path), "wb") as copy:
                shutil.copyfileobj(source, copy, COPY_CHUNK)
            self._edit(copy_path)
            if self.pruning:
                _rebuild(copy_path, path, self.pruning)
        finally:
            if copy_path != path:
                Path(copy_path).unlink(missing_ok=True)

    def _edit(self, path: str) -> None:
        h5py = import_h5py()

        with h5py.File(path, "r+") as file:
            for new in self.new:
                file.create_dataset(new.path, data=new.values)
            for name, values in self.replaced:
                file[name][...] = values
            for listed in self.weight_names:
                file[listed.group].attrs["weight_names"] = _names_attr(listed.names, listed.as_bytes)


def _names_attr(names: Sequence[str], as_bytes: bool) -> np.ndarray:
    """A list of names as an HDF5 attribute value; Keras 2 wrote bytes: they stay bytes."""
    h5py = import_h5py()
    import numpy as np

    if as_bytes:
        return np.array([encode_name(name) for name in names])
    return np.array(names, dtype=h5py.string_dtype())


def _is_bytes_attr(group: Any, name: str) -> bool:
    value = group.attrs.get(name)
    return value is not None and getattr(value, "dtype", None) is not None and value.dtype.kind == "S"


def _copy_attributes(source: Any, target: Any, skip: Sequence[str] = ()) -> None:
    for name, value in source.attrs.items():
        if name not in skip:
            target.attrs[name] = value


def _rebuild(source_path: str, out_path: str, pruning: _Pruning) -> None:
    """A new HDF5 file holding what `source_path` holds, less the pruned members, layer groups renamed."""
    h5py = import_h5py()
    renames = dict(pruning.layer_renames)
    with h5py.File(source_path, "r") as source, h5py.File(out_path, "w-") as target:
        _copy_attributes(source, target, pruning.attributes)
        if renames and "model_config" in source.attrs:
            target.attrs["model_config"] = _renamed_config(source.attrs["model_config"], renames)
        top_level_layers = (
            set(string_list_attr(source, "layer_names")) if renames and not pruning.layers_root else set()
        )
        for name in source:
            if name in pruning.members or name in top_level_layers:
                continue
            if renames and name == pruning.layers_root:
                group = target.create_group(name)
                _copy_attributes(source[name], group)
                _copy_layers(source[name], group, renames)
            else:
                source.copy(source[name], target, name=name)
        if renames and not pruning.layers_root:
            _copy_layers(source, target, renames, only_layers=True)


def _copy_layers(source: Any, target: Any, renames: Mapping[str, str], only_layers: bool = False) -> None:
    """The legacy layer groups of `source` into `target` under their new names, with `layer_names` and each
    renamed layer's `weight_names` (and the weights' own scope inside the group) following."""
    layer_names = string_list_attr(source, "layer_names")
    new_names = [renames.get(name, name) for name in layer_names]
    target.attrs["layer_names"] = _names_attr(new_names, _is_bytes_attr(source, "layer_names"))
    for name in source:
        if only_layers and name not in layer_names:
            continue
        new = renames.get(name, name)
        source.copy(source[name], target, name=new)
        if new == name:
            continue
        group = target[new]
        weights = string_list_attr(group, "weight_names")
        renamed = [new + weight[len(name) :] if weight.split("/")[0] == name else weight for weight in weights]
        if name in group and any(weight.split("/")[0] == name for weight in weights):
            group.move(name, new)
        group.attrs["weight_names"] = _names_attr(renamed, _is_bytes_attr(source[name], "weight_names"))


def _renamed_config(raw: Any, renames: Mapping[str, str]) -> str:
    """A legacy model_config with the layers renamed: each layer's `name` (and its config's), and every
    reference to a layer by name (Keras 2 inbound nodes, Keras 3 `keras_history`, input and output layers)."""
    import json

    config = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))

    def rename_reference(node: Any) -> Any:
        """`["conv_0", 0, 0, ...]` names a layer by its first element."""
        if isinstance(node, list) and node and isinstance(node[0], str) and len(node) >= 3:
            return [renames.get(node[0], node[0]), *node[1:]]
        return node

    def walk(node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            out = {k: walk(v, k) for k, v in node.items()}
            if "class_name" in out and isinstance(out.get("name"), str):
                out["name"] = renames.get(out["name"], out["name"])
            config_part = out.get("config")
            if "class_name" in out and isinstance(config_part, dict) and isinstance(config_part.get("name"), str):
                config_part["name"] = renames.get(config_part["name"], config_part["name"])
            if "keras_history" in out:
                out["keras_history"] = rename_reference(out["keras_history"])
            return out
        if isinstance(node, list):
            if key in ("input_layers", "output_layers"):
                if node and isinstance(node[0], str):
                    return rename_reference(node)
                return [rename_reference(item) for item in node]
            if key == "inbound_nodes":
                return [
                    [rename_reference(item) for item in each] if isinstance(each, list) else walk(each) for each in node
                ]
            return [walk(item) for item in node]
        return node

    return json.dumps(walk(config))


def _without_compile_config(location: str, archive: zipfile.ZipFile) -> bytes | None:
    """config.json without `compile_config` (None where there is none): a model whose optimizer state is gone
    loads uncompiled, as a legacy file without `training_config` does, rather than with a warning that the
    saved optimizer has no variables."""
    import json

    if CONFIG_MEMBER not in archive.namelist():
        return None
    try:
        config = json.loads(read_member(location, archive, CONFIG_MEMBER, MAX_CONFIG_SIZE))
    except (ValueError, RecursionError):
        raise OutputError(f"{location}: {CONFIG_MEMBER} is not valid JSON") from None
    if not isinstance(config, dict) or "compile_config" not in config:
        return None
    del config["compile_config"]
    return json.dumps(config).encode()


def _replace_member(archive: str, out: str, member: str, data_path: str, config: bytes | None = None) -> None:
    """A new zip with `member` replaced from a file (and config.json by `config` when given); every other
    member, and the order, unchanged."""
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(out, "w") as new:
        for info in old.infolist():
            if info.filename == CONFIG_MEMBER and config is not None:
                new.writestr(info, config)
            elif info.filename == member:
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
        if edits.rename:
            raise UnsupportedEdit(
                f"{reader.location}: Keras 3 weights are stored by each layer's position (layers/<class>_N/vars), "
                "not by its name: there is nothing to rename; a model with other layer names loads them as they are"
            )
        check_replacements(source, edits)
        check_drops_and_renames(source, edits)
        pruning = _Pruning(members=_dropped_optimizer(source, edits, ("optimizer",)))
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
        member = WEIGHTS_MEMBER if self.zipped else None
        return KerasPlan(reader.location, member, tuple(new), replaced, pruning=pruning)


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
        check_replacements(source, edits)
        check_drops_and_renames(source, edits)
        root = reader.weights_root
        members = _dropped_optimizer(source, edits, ("optimizer_weights",))
        pruning = _Pruning(
            members=members,
            attributes=("training_config",) if members else (),  # how to compile: with the optimizer it goes
            layers_root=root.name.lstrip("/"),
            layer_renames=_layer_renames(source, edits, root),
        )
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
        return KerasPlan(reader.location, None, tuple(new), replaced, weight_names, pruning)


def _dropped_optimizer(source: Checkpoint, edits: Edits, groups: tuple[str, ...]) -> tuple[str, ...]:
    """The optimizer's top-level group when the edits drop it whole; the only drop a Keras file takes, since
    Keras loads a layer's weights by position: a layer short of one would not load at all."""
    if not edits.drop:
        return ()
    location = source.reader.location
    tops = {name.split("/")[0] for name in edits.drop}
    if len(tops) > 1 or not tops <= set(groups):
        outside = min(name for name in edits.drop if name.split("/")[0] not in groups)
        raise UnsupportedEdit(
            f"{location}: cannot drop {outside}: Keras loads a layer's weights by position, so only the "
            "optimizer's state can be dropped from Keras files"
        )
    (top,) = tops
    kept = sorted(
        info.name for info in source.reader.tensors() if info.name.startswith(top + "/") and info.name not in edits.drop
    )
    if kept:
        raise UnsupportedEdit(f"{location}: the optimizer's state is dropped whole or not at all ({kept[0]} is kept)")
    return (top,)


def _layer_renames(source: Checkpoint, edits: Edits, root: Any) -> tuple[tuple[str, str], ...]:
    """Legacy layer renames implied by tensor renames: each tensor `<root>/<layer>/<layer>/<w>` of a renamed
    layer moves to `<root>/<new>/<new>/<w>`, every tensor of the layer alike (Keras finds weights by layer)."""
    location = source.reader.location
    layers_root = root.name.lstrip("/")
    prefix = layers_root + "/" if layers_root else ""
    layers: dict[str, str] = {}

    def split(name: str) -> tuple[str, str]:
        layer, _, rest = name[len(prefix) :].partition("/")
        if not name.startswith(prefix) or not rest:
            raise UnsupportedEdit(
                f"{location}: {name} is not a layer weight; only layers can be renamed in Keras files"
            )
        return layer, rest

    for old, new in sorted(edits.rename.items()):
        (layer, rest), (new_layer, new_rest) = split(old), split(new)
        expected = new_layer + rest[len(layer) :] if rest.split("/")[0] == layer else rest
        if new_rest != expected or "/" in new_layer:
            raise UnsupportedEdit(
                f"{location}: cannot rename {old} to {new}: Keras files rename whole layers ({layer} to another name)"
            )
        if layers.setdefault(layer, new_layer) != new_layer:
            raise OutputError(f"{location}: layer {layer} would be renamed to both {layers[layer]} and {new_layer}")
    names = [info.name for info in source.reader.tensors()]
    for layer in layers:
        left = [name for name in names if name.startswith(f"{prefix}{layer}/") and name not in edits.rename]
        if left:
            raise OutputError(f"{location}: layer {layer} is renamed but not its weight {left[0]}")
    staying = (set(string_list_attr(root, "layer_names")) | set(root)) - set(layers)
    by_new: dict[str, str] = {}
    for layer, new_layer in layers.items():
        if by_new.setdefault(new_layer, layer) != layer:
            raise OutputError(
                f"{location}: layers {by_new[new_layer]} and {layer} would both be renamed to {new_layer}"
            )
        if new_layer in staying:
            raise OutputError(f"{location}: cannot rename layer {layer} to {new_layer}, which is already taken")
    return tuple(sorted(layers.items()))
