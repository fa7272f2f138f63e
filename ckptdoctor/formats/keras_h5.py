"""Reader for legacy Keras HDF5 files (`.h5`): weights-only, or full models under `model_weights`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckptdoctor.formats.base import Progress, ScanResult
from ckptdoctor.formats.keras_common import (
    dataset_info,
    import_h5py,
    layer_configs,
    parse_json,
    read_dataset,
    scan_datasets,
    string_list_attr,
    strip_device_suffix,
    unlisted_datasets,
)
from ckptdoctor.model import CheckpointError, LayerConfig, TensorInfo

if TYPE_CHECKING:
    import h5py
    import numpy as np


def is_legacy_layout(file: h5py.File) -> bool:
    root = file.get("model_weights", file)
    return any(name in root.attrs for name in ("layer_names", "layer_names0"))


class KerasH5Reader:
    format = "keras-h5"

    def __init__(self, path: str) -> None:
        self.location = path
        h5py = import_h5py()
        try:
            self.file = h5py.File(path, "r")
        except OSError as error:
            raise CheckpointError(f"{path}: HDF5 file cannot be opened ({error})") from None
        self.weights_root = self.file.get("model_weights", self.file)
        config = self.file.attrs.get("model_config")
        self.configs = layer_configs(parse_json(config, path)) if config is not None else {}
        self._datasets: dict[str, h5py.Dataset] = {}
        self._infos: list[TensorInfo] = []
        self._list_model_weights()
        self._list_optimizer_weights()
        for dataset in unlisted_datasets(self.file, self._datasets):  # e.g. metrics/…, stray datasets
            info = dataset_info(dataset, path=dataset.name.lstrip("/").replace("/vars/", "/"))
            self._datasets[info.name] = dataset
            self._infos.append(info)

    def _list_model_weights(self) -> None:
        for layer in string_list_attr(self.weights_root, "layer_names"):
            if layer not in self.weights_root:
                continue
            group = self.weights_root[layer]
            for weight in string_list_attr(group, "weight_names"):
                if weight not in group:
                    continue
                local = strip_device_suffix(weight)
                local = local[len(layer) + 1 :] if local.startswith(layer + "/") else local
                self._add(group[weight], path=f"{layer}/{local}", full_name=strip_device_suffix(weight))

    def _list_optimizer_weights(self) -> None:
        if "optimizer_weights" not in self.file:
            return
        group = self.file["optimizer_weights"]
        for weight in string_list_attr(group, "weight_names"):
            if weight in group:
                full_name = strip_device_suffix(weight)
                self._add(group[weight], path=f"optimizer/{full_name}", full_name=full_name, optimizer_state=True)

    def _add(self, dataset, **fields) -> None:
        import h5py

        if isinstance(dataset, h5py.Dataset) and dataset.name not in self._datasets:
            info = dataset_info(dataset, **fields)
            self._datasets[info.name] = dataset
            self._infos.append(info)

    def layers(self) -> tuple[LayerConfig, ...]:
        return tuple(self.configs.values())

    def tensors(self) -> tuple[TensorInfo, ...]:
        return tuple(self._infos)

    def read(self, name: str) -> np.ndarray:
        return read_dataset(self._datasets[name])

    def scan(self, progress: Progress | None = None) -> ScanResult:
        return scan_datasets(self._datasets, progress)

    def close(self) -> None:
        self.file.close()
