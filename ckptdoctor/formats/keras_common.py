"""What the Keras readers share: HDF5 attribute decoding, model configs, values and scans of datasets."""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from ckptdoctor.formats.base import SCAN_CHUNK, Progress, ScanResult
from ckptdoctor.model import CheckpointError, LayerConfig, TensorInfo

if TYPE_CHECKING:
    import h5py
    import numpy as np

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def import_h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency; this guards broken installs
        raise CheckpointError("reading Keras files needs h5py: pip install h5py") from None
    return h5py


def decode_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def string_list_attr(group: h5py.Group, name: str) -> list[str]:
    """A list-of-strings attribute, joined from `name0`, `name1`, … where Keras chunked a long list."""
    if name in group.attrs:
        values = group.attrs[name]
    else:
        values, index = [], 0
        while f"{name}{index}" in group.attrs:
            values.extend(group.attrs[f"{name}{index}"])
            index += 1
    if getattr(values, "dtype", None) is not None and values.dtype.kind == "f":  # empty lists are float64
        return []
    return [decode_text(v) for v in values]


def strip_device_suffix(name: str) -> str:
    """Keras 2 weight names end in `:0`."""
    return re.sub(r":\d+$", "", name)


def layer_configs(config: dict[str, Any] | None, prefix: str = "") -> dict[str, LayerConfig]:
    """Every layer of a Keras model config by name, nested models' layers under their model's name."""
    out: dict[str, LayerConfig] = {}
    if not isinstance(config, dict):
        return out
    for layer in config.get("config", {}).get("layers", []) or []:
        if not isinstance(layer, dict):
            continue
        settings = layer.get("config", {}) or {}
        name = settings.get("name")
        if not isinstance(name, str):
            continue
        path = f"{prefix}{name}"
        class_name = str(layer.get("class_name", ""))
        out[path] = LayerConfig(path, class_name, bool(settings.get("scale", True)), bool(settings.get("center", True)))
        if isinstance(settings.get("layers"), list):
            out.update(layer_configs(layer, prefix=f"{path}/"))
    return out


def parse_json(text: str | bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{where}: model configuration is not valid JSON") from None
    return value if isinstance(value, dict) else {}


def dataset_info(dataset: h5py.Dataset, **fields: Any) -> TensorInfo:
    dtype = dataset_dtype_name(dataset)
    shape = tuple(int(d) for d in dataset.shape)
    return TensorInfo(dataset.name.lstrip("/"), dtype, shape, math.prod(shape) * dataset.dtype.itemsize, **fields)


def dataset_dtype_name(dataset: h5py.Dataset) -> str:
    if decode_text(dataset.attrs.get("dtype", "")) == "bfloat16":
        return "bfloat16"
    kind = dataset.dtype
    if kind.kind in "SUO":
        return "string"
    if kind.kind == "b":
        return "bool"
    return {"f": "float", "i": "int", "u": "uint", "c": "complex"}[kind.kind] + str(kind.itemsize * 8)


def read_dataset(dataset: h5py.Dataset) -> np.ndarray:
    import numpy as np

    values = np.asarray(dataset[()])
    if dataset_dtype_name(dataset) == "bfloat16" and values.dtype == np.uint16:
        values = (values.astype(np.uint32) << 16).view(np.float32)
    return values


def scan_datasets(datasets: dict[str, h5py.Dataset], progress: Progress | None = None) -> ScanResult:
    """Count NaN/Inf in every float dataset, reading large ones a slab at a time."""
    import numpy as np

    nonfinite: dict[str, int] = {}
    total, done = sum(d.nbytes for d in datasets.values()), 0
    for name, dataset in datasets.items():
        done += dataset.nbytes
        if progress:
            progress(done, total)
        if dataset_dtype_name(dataset) not in ("float16", "float32", "float64", "bfloat16"):
            continue
        bad = 0
        if dataset.ndim == 0 or dataset.nbytes <= SCAN_CHUNK:
            values = read_dataset(dataset)
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        else:
            rows = max(1, SCAN_CHUNK // max(1, dataset.nbytes // dataset.shape[0]))
            for start in range(0, dataset.shape[0], rows):
                values = np.asarray(dataset[start : start + rows])
                bad += int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            nonfinite[name] = bad
    return ScanResult(nonfinite=nonfinite)


def unlisted_datasets(file: h5py.File, listed: dict[str, h5py.Dataset]) -> list[h5py.Dataset]:
    """Datasets outside the layout a reader understood, so that a listing still shows every one."""
    import h5py

    found: list[h5py.Dataset] = []
    file.visititems(lambda name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return [dataset for dataset in found if dataset.name.lstrip("/") not in listed]
