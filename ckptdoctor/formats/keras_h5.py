"""Reader for legacy Keras HDF5 files (`.h5`): weights-only, or full models under `model_weights`."""

from __future__ import annotations

import re

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.formats.keras_common import (
    Hdf5Reader,
    OutsideLink,
    layer_configs,
    member,
    parse_json,
    string_list_attr,
    strip_device_suffix,
)
from ckptdoctor.model import Format, LayerConfig

if TYPE_CHECKING:
    import h5py


def is_legacy_layout(file: h5py.File) -> bool:
    root = member(file, "model_weights")
    if isinstance(root, OutsideLink):
        return True  # the reader lists the link and never follows it
    root = file if root is None else root
    return any(name in root.attrs for name in ("layer_names", "layer_names0"))


def _local_name(layer: str, weight: str) -> str:
    """A weight's name within its layer: `gamma` from `bn/gamma:0`, and from `bn_1/gamma:0` too, since
    Keras 2.0 scoped variables by a uniquified name (layer `batch_normalization_1` holds
    `batch_normalization_1_1/gamma:0`). Names led by another layer's scope (nested models) stay whole."""
    name = strip_device_suffix(weight)
    first, _, rest = name.partition("/")
    if rest and (first == layer or re.fullmatch(re.escape(layer) + r"_\d+", first)):
        return rest
    return name


class KerasH5Reader(Hdf5Reader):
    """Layout: `layer_names` on the root (or `model_weights`), `weight_names` on each layer group."""

    format = Format.KERAS_H5

    def __init__(self, path: str, file: h5py.File) -> None:
        self.location = path
        self.file = file
        self.configs: dict[str, LayerConfig] = {}
        self._start()
        self._list_safely(self._walk)

    def _walk(self) -> None:
        self.weights_root = self._child(self.file, "model_weights")
        if self.weights_root is None:
            self.weights_root = self.file
        config = self.file.attrs.get("model_config")
        self.configs = layer_configs(parse_json(config, self.location)) if config is not None else {}
        for layer in string_list_attr(self.weights_root, "layer_names"):
            group = self._child(self.weights_root, layer)
            if group is None:
                continue
            for weight in string_list_attr(group, "weight_names"):
                path = f"{layer}/{_local_name(layer, weight)}"
                self._add(self._child(group, weight), path=path, full_name=strip_device_suffix(weight))
        group = self._child(self.file, "optimizer_weights")
        if group is not None:
            for weight in string_list_attr(group, "weight_names"):
                full_name = strip_device_suffix(weight)
                self._add(
                    self._child(group, weight), path=f"optimizer/{full_name}", full_name=full_name, optimizer_state=True
                )

    def layers(self) -> tuple[LayerConfig, ...]:
        return tuple(self.configs.values())
