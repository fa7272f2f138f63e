"""Reader for legacy Keras HDF5 files (`.h5`): weights-only, or full models under `model_weights`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ckptdoctor.formats.keras_common import (
    Hdf5Reader,
    layer_configs,
    parse_json,
    string_list_attr,
    strip_device_suffix,
)
from ckptdoctor.model import LayerConfig

if TYPE_CHECKING:
    import h5py


def is_legacy_layout(file: h5py.File) -> bool:
    root = file.get("model_weights", file)
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

    format = "keras-h5"

    def __init__(self, path: str, file: h5py.File) -> None:
        self.location = path
        self.file = file
        self.configs: dict[str, LayerConfig] = {}
        self._start()
        self._list_safely(self._walk)

    def _walk(self) -> None:
        self.weights_root = self.file.get("model_weights", self.file)
        config = self.file.attrs.get("model_config")
        self.configs = layer_configs(parse_json(config, self.location)) if config is not None else {}
        for layer in string_list_attr(self.weights_root, "layer_names"):
            if layer not in self.weights_root:
                continue
            group = self.weights_root[layer]
            for weight in string_list_attr(group, "weight_names"):
                if weight not in group:
                    continue
                self._add(
                    group[weight], path=f"{layer}/{_local_name(layer, weight)}", full_name=strip_device_suffix(weight)
                )
        if "optimizer_weights" in self.file:
            group = self.file["optimizer_weights"]
            for weight in string_list_attr(group, "weight_names"):
                if weight in group:
                    full_name = strip_device_suffix(weight)
                    self._add(group[weight], path=f"optimizer/{full_name}", full_name=full_name, optimizer_state=True)

    def layers(self) -> tuple[LayerConfig, ...]:
        return tuple(self.configs.values())
