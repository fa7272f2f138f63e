"""Reader for Keras 3 weights: `.weights.h5` files and the `.keras` zip that holds one beside config.json."""

from __future__ import annotations

import re
import zipfile
from typing import TYPE_CHECKING

from ckptdoctor.formats.base import Progress, ScanResult
from ckptdoctor.formats.keras_common import (
    dataset_info,
    decode_text,
    import_h5py,
    layer_configs,
    parse_json,
    read_dataset,
    scan_datasets,
    unlisted_datasets,
)
from ckptdoctor.model import CheckpointError, LayerConfig, TensorInfo

if TYPE_CHECKING:
    import h5py
    import numpy as np

WEIGHTS_MEMBER = "model.weights.h5"
CONFIG_MEMBER = "config.json"

# Variable names by position for layers whose order is fixed (the rest are shown by index).
_KERNEL_BIAS = ("kernel", "bias")
_KNOWN_ORDER = {
    "Dense": _KERNEL_BIAS, "Conv1D": _KERNEL_BIAS, "Conv2D": _KERNEL_BIAS, "Conv3D": _KERNEL_BIAS,
    "Conv2DTranspose": _KERNEL_BIAS, "Embedding": ("embeddings",), "LayerNormalization": ("gamma", "beta"),
}  # fmt: skip


def class_from_container(container: str) -> str:
    """Keras names weight containers after the snake_case class: `batch_normalization_2` -> BatchNormalization."""
    base = re.sub(r"_\d+$", "", container)
    special = {"conv1d": "Conv1D", "conv2d": "Conv2D", "conv3d": "Conv3D", "conv2d_transpose": "Conv2DTranspose"}
    return special.get(base) or "".join(part.capitalize() for part in base.split("_"))


def is_v3_layout(file: h5py.File) -> bool:
    return "layers" in file or "vars" in file


def _looks_like_gamma(dataset: h5py.Dataset) -> bool:
    """gamma starts at 1 and beta at 0, and training rarely moves either far: the nearer start wins."""
    import numpy as np

    values = np.asarray(dataset[()], dtype=np.float64)
    return values.size > 0 and float(np.median(np.abs(values - 1))) < float(np.median(np.abs(values)))


def _batchnorm_names(vars_group: h5py.Group, config: LayerConfig | None) -> list[str]:
    """Names of a BatchNormalization's stored variables, in index order.

    With the model config the order is exact. Without it (a bare .weights.h5), four variables are
    gamma, beta, moving_mean, moving_variance; three lack gamma or beta, told apart by the first one's
    values; two or one are parameters whose statistics were lost."""
    count = len(vars_group)
    if config is not None:
        expected = list(config.batchnorm_parts)
    elif count >= 4:
        expected = ["gamma", "beta", "moving_mean", "moving_variance"]
    elif count == 2:
        expected = ["gamma", "beta"]
    elif count in (1, 3):
        first = "gamma" if "0" in vars_group and _looks_like_gamma(vars_group["0"]) else "beta"
        expected = [first, "moving_mean", "moving_variance"]
    else:
        expected = []
    return expected[:count] + [str(i) for i in range(len(expected), count)]


class KerasV3Reader:
    """Layout: /layers/<container>/vars/<i> (nested models recurse), /vars, /optimizer/vars/<i>."""

    def __init__(self, path: str) -> None:
        self.location = path
        self.format = "keras-weights-h5"
        self._zip: zipfile.ZipFile | None = None
        self.configs: dict[str, LayerConfig] = {}
        h5py = import_h5py()
        try:
            if zipfile.is_zipfile(path):
                self.format = "keras-zip"
                self._zip = zipfile.ZipFile(path)
                names = set(self._zip.namelist())
                if WEIGHTS_MEMBER not in names:
                    raise CheckpointError(f"{path}: .keras archive has no {WEIGHTS_MEMBER}")
                if CONFIG_MEMBER in names:
                    self.configs = layer_configs(parse_json(self._zip.read(CONFIG_MEMBER), path))
                self.file = h5py.File(self._zip.open(WEIGHTS_MEMBER), "r")
            else:
                self.file = h5py.File(path, "r")
        except (OSError, zipfile.BadZipFile, KeyError) as error:
            raise CheckpointError(f"{path}: cannot be opened ({error})") from None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._infos: list[TensorInfo] = []
        self._layers: dict[str, LayerConfig] = {}
        self.vars_groups: dict[str, str] = {}  # layer path -> HDF5 path of its `vars` group
        if "layers" in self.file:
            self._walk_layers(self.file["layers"], prefix="")
        if "vars" in self.file:
            self._add_vars(self.file["vars"], path_prefix=decode_text(self.file["vars"].attrs.get("name", "model")))
        if "optimizer" in self.file and "vars" in self.file["optimizer"]:
            optimizer = self.file["optimizer/vars"]
            names = ["iterations", "learning_rate"]  # then one slot per trainable weight and slot kind
            self._add_vars(optimizer, path_prefix="optimizer", names=names, optimizer_state=True)
        for dataset in unlisted_datasets(self.file, self._datasets):  # e.g. metrics/…, stray datasets
            info = dataset_info(dataset, path=dataset.name.lstrip("/").replace("/vars/", "/"))
            self._datasets[info.name] = dataset
            self._infos.append(info)

    def _walk_layers(self, layers: h5py.Group, prefix: str) -> None:
        for container in layers:
            group = layers[container]
            vars_group = group.get("vars")
            name = decode_text(vars_group.attrs.get("name", container)) if vars_group is not None else container
            path = f"{prefix}{name}"
            config = self.configs.get(path) or LayerConfig(path, class_from_container(container))
            self._layers[path] = config
            if vars_group is not None:
                self.vars_groups[path] = vars_group.name.lstrip("/")
                count = len(vars_group)
                if config.is_batchnorm:
                    names = _batchnorm_names(vars_group, self.configs.get(path))
                else:
                    names = list(_KNOWN_ORDER.get(config.class_name, ()))[:count]
                    names += [str(i) for i in range(len(names), count)]
                self._add_vars(vars_group, path_prefix=path, names=names)
            if "layers" in group:
                self._walk_layers(group["layers"], prefix=f"{path}/")

    def _add_vars(self, group: h5py.Group, path_prefix: str, names=None, optimizer_state: bool = False) -> None:
        for index in sorted(int(k) for k in group if k.isdigit()):  # h5py lists "10" before "2"
            leaf = names[index] if names and index < len(names) else str(index)
            info = dataset_info(group[str(index)], path=f"{path_prefix}/{leaf}", optimizer_state=optimizer_state)
            self._datasets[info.name] = group[str(index)]
            self._infos.append(info)

    def layers(self) -> tuple[LayerConfig, ...]:
        return tuple(self._layers.values())

    def tensors(self) -> tuple[TensorInfo, ...]:
        return tuple(self._infos)

    def read(self, name: str) -> np.ndarray:
        return read_dataset(self._datasets[name])

    def scan(self, progress: Progress | None = None) -> ScanResult:
        return scan_datasets(self._datasets, progress)

    def close(self) -> None:
        self.file.close()
        if self._zip is not None:
            self._zip.close()
