"""Reader for Keras 3 weights: `.weights.h5` files and the `.keras` zip that holds one beside config.json."""

from __future__ import annotations

import re
import struct
import zipfile
from contextlib import closing

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.formats.base import Progress, ScanResult, VerifiedBytes
from ckptdoctor.formats.bytesource import SourceFile, is_url, open_source, require_regular
from ckptdoctor.formats.keras_common import (
    Hdf5Reader,
    decode_text,
    layer_configs,
    member,
    open_hdf5,
    parse_json,
    read_dataset,
)
from ckptdoctor.formats.keras_optimizer import OptimizerSpec, StoredVar, optimizer_names, optimizer_spec
from ckptdoctor.model import (
    BATCHNORM_PARTS,
    BATCHNORM_STATISTICS,
    CheckpointError,
    Format,
    IntegrityProblem,
    LayerConfig,
    ProblemKind,
    TensorInfo,
)

if TYPE_CHECKING:
    import h5py

WEIGHTS_MEMBER = "model.weights.h5"
CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"  # {"keras_version": …}: which Keras wrote the file
# A compressed member is inflated only up to these sizes: a 1 MB zip member can claim gigabytes. Keras
# itself stores every member uncompressed, and its config.json is kilobytes.
MAX_CONFIG_SIZE = 64 << 20
MAX_INFLATED_MEMBER = 256 << 20

# Variable names by position for layers whose order is fixed (the rest are shown by index).
_KERNEL_BIAS = ("kernel", "bias")
_KNOWN_ORDER = {
    "Dense": _KERNEL_BIAS,
    "Conv1D": _KERNEL_BIAS,
    "Conv2D": _KERNEL_BIAS,
    "Conv3D": _KERNEL_BIAS,
    "Conv2DTranspose": _KERNEL_BIAS,
    "Embedding": ("embeddings",),
    "LayerNormalization": ("gamma", "beta"),
}


def class_from_container(container: str) -> str:
    """Keras names weight containers after the snake_case class: `batch_normalization_2` -> BatchNormalization."""
    base = re.sub(r"_\d+$", "", container)
    special = {"conv1d": "Conv1D", "conv2d": "Conv2D", "conv3d": "Conv3D", "conv2d_transpose": "Conv2DTranspose"}
    return special.get(base) or "".join(part.capitalize() for part in base.split("_"))


def _member_file(path: str, info: zipfile.ZipInfo, archive: zipfile.ZipFile):
    """A file object over one member: in place when stored uncompressed (as Keras writes), else unzipped."""
    if info.compress_type != zipfile.ZIP_STORED:
        _refuse_inflating(path, info, MAX_INFLATED_MEMBER)
        return archive.open(info)
    # A stored member is read in place, by offset: HDF5 seeks freely and reads what it needs, and a damaged
    # byte shows up in the data instead of failing the whole archive's CRC check.
    source = open_source(path)
    header = source.read(info.header_offset, 30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        source.close()
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    name_length, extra_length = struct.unpack_from("<HH", header, 26)
    return SourceFile(source, info.header_offset + 30 + name_length + extra_length, info.file_size)


def _refuse_inflating(path: str, info: zipfile.ZipInfo, cap: int) -> None:
    """zipfile stops a member at its declared size, so a declared size within the cap bounds the inflating."""
    if info.file_size > cap:
        raise CheckpointError(
            f"{path}: {info.filename} inflates to {info.file_size} bytes, over the {cap >> 20} MiB that "
            "ckptdoctor unpacks"
        )


def read_member(path: str, archive: zipfile.ZipFile, name: str, cap: int) -> bytes:
    """A member's bytes, at most `cap`: read cap + 1 bytes, never trusting the size the archive declares."""
    info = archive.getinfo(name)
    _refuse_inflating(path, info, cap)
    with archive.open(info) as member_file:
        data = member_file.read(cap + 1)
    if len(data) > cap:
        raise CheckpointError(f"{path}: {name} is over the {cap >> 20} MiB that ckptdoctor unpacks")
    return data


def damaged_member(path: str, archive: zipfile.ZipFile, progress: Progress | None = None) -> tuple[str, str] | None:
    """(member, why) for the first member whose bytes fail their CRC-32, as Keras's own unzip would find;
    checked a megabyte at a time, with compressed members capped and overlapping members refused.
    `progress(done, total)` follows the bytes checked, per megabyte: a large asset is no stall."""
    with closing(open_source(path)) as source:
        size = source.size()
    infos = archive.infolist()
    total, done = sum(info.file_size for info in infos), 0
    if sum(info.compress_size for info in infos) > size:
        return path, "members claim more bytes than the archive holds (overlapping members)"
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_INFLATED_MEMBER:
            return info.filename, f"inflates to {info.file_size} bytes, over the {MAX_INFLATED_MEMBER >> 20} MiB cap"
        try:
            with archive.open(info) as member_file:
                while block := member_file.read(1 << 20):
                    done += len(block)
                    if progress:
                        progress(min(done, total), total)
        except zipfile.BadZipFile:
            return info.filename, "bytes do not match the CRC-32 the archive records"
    return None


def _indices(group: h5py.Group) -> list[int]:
    return sorted(int(k) for k in group if k.isdecimal())  # h5py lists "10" before "2"


def is_v3_layout(file: h5py.File) -> bool:
    return member(file, "layers") is not None or member(file, "vars") is not None


def _looks_like_gamma(dataset: h5py.Dataset) -> bool:
    """gamma starts at 1 and beta at 0, and training rarely moves either far: the nearer start wins."""
    import numpy as np

    try:
        values = np.asarray(read_dataset(dataset), dtype=np.float64)
    except CheckpointError:  # not stored in this file, or not at all: the scan reports it
        return False
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
        expected = list(BATCHNORM_PARTS)
    elif count == 2:
        expected = list(BATCHNORM_PARTS[:2])
    elif count in (1, 3):
        import h5py

        first_var = member(vars_group, "0")
        first = "gamma" if isinstance(first_var, h5py.Dataset) and _looks_like_gamma(first_var) else "beta"
        expected = [first, *BATCHNORM_STATISTICS]
    else:
        expected = []
    return expected[:count] + [str(i) for i in range(len(expected), count)]


class KerasV3Reader(Hdf5Reader):
    """Layout: /layers/<container>/vars/<i> (nested models recurse), /vars, /optimizer/vars/<i>."""

    def __init__(self, path: str, file: h5py.File | None = None) -> None:
        """`file` is the opened `.weights.h5`; without it, `path` is a `.keras` archive."""
        self.location = path
        self.format = Format.KERAS_WEIGHTS_H5
        self._zip: zipfile.ZipFile | None = None
        self.configs: dict[str, LayerConfig] = {}
        self._layers: dict[str, LayerConfig] = {}
        self.vars_groups: dict[str, str] = {}  # layer path -> HDF5 path of its `vars` group
        self._optimizer: OptimizerSpec | None = None
        self._trainable: dict[str, list[TensorInfo]] = {}  # layer path -> its trainable variables, in order
        if file is None:
            self.format = Format.KERAS_ZIP
            self.file = self._open_archive(path)
        else:
            self.file = file
        self._start()
        self._list_safely(self._walk)

    def _open_archive(self, path: str) -> h5py.File:
        try:
            require_regular(path)
            self._zip = zipfile.ZipFile(SourceFile(open_source(path)) if is_url(path) else path)
            names = set(self._zip.namelist())
            if WEIGHTS_MEMBER not in names:
                raise CheckpointError(f"{path}: .keras archive has no {WEIGHTS_MEMBER}")
            if CONFIG_MEMBER in names:
                config = parse_json(read_member(path, self._zip, CONFIG_MEMBER, MAX_CONFIG_SIZE), path)
                self.configs = layer_configs(config)
                self._optimizer = optimizer_spec(config, self._keras_version(path, names))
            return open_hdf5(_member_file(path, self._zip.getinfo(WEIGHTS_MEMBER), self._zip), path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, CheckpointError) as error:
            if self._zip is not None:
                self._zip.close()
            if isinstance(error, zipfile.BadZipFile) and self._zip is None:
                raise CheckpointError(
                    f"{path}: damaged .keras archive: its zip directory is missing (truncated download?)"
                ) from None
            if isinstance(error, CheckpointError):
                raise
            raise CheckpointError(f"{path}: damaged .keras archive ({error})") from None

    def _keras_version(self, path: str, names: set[str]) -> str | None:
        """The version metadata.json records; only optimizer naming uses it, so a damaged one is no error."""
        if self._zip is None or METADATA_MEMBER not in names:
            return None
        try:
            metadata = parse_json(read_member(path, self._zip, METADATA_MEMBER, MAX_CONFIG_SIZE), path)
        except CheckpointError:
            return None
        version = metadata.get("keras_version") if isinstance(metadata, dict) else None
        return version if isinstance(version, str) else None

    def _walk(self) -> None:
        layers = self._child(self.file, "layers")
        if layers is not None:
            self._walk_layers(layers, prefix="")
        model_vars = self._child(self.file, "vars")
        if model_vars is not None:
            self._add_vars(model_vars, path_prefix=decode_text(model_vars.attrs.get("name", "model")))
        optimizer_vars = self._child(self.file, "optimizer/vars")
        if optimizer_vars is not None:
            self._add_optimizer_vars(optimizer_vars)

    def _walk_layers(self, layers: h5py.Group, prefix: str) -> None:
        for container in layers:
            group = self._child(layers, container)
            if group is None:
                continue
            vars_group = self._child(group, "vars")
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
                added = self._add_vars(vars_group, path_prefix=path, names=names)
                statistics = {f"{path}/{part}" for part in BATCHNORM_STATISTICS}
                self._trainable[path] = [info for info in added if config.trainable and info.path not in statistics]
            nested = self._child(group, "layers")
            if nested is not None:
                self._walk_layers(nested, prefix=f"{path}/")

    def _add_vars(self, group: h5py.Group, path_prefix: str, names=None) -> list[TensorInfo]:
        """Add the group's variables `0`, `1`, … named by position; returns the ones added."""
        before = len(self._infos)
        for index in _indices(group):
            leaf = names[index] if names and index < len(names) else str(index)
            self._add(self._child(group, str(index)), path=f"{path_prefix}/{leaf}")
        return self._infos[before:]

    def _add_optimizer_vars(self, group: h5py.Group) -> None:
        """Keras loads `optimizer/vars/<i>` by position; named after the model's variables where the layout the
        optimizer's config implies fits the stored count and shapes (formats/keras_optimizer.py)."""
        import h5py

        indices = _indices(group)
        stored = []
        for index in indices:  # shapes first; each dataset is looked up again when it is added, as layers' are
            found = self._child(group, str(index))
            is_dataset = isinstance(found, h5py.Dataset)
            shape = tuple(int(d) for d in found.shape) if is_dataset else (-1,)  # (-1,) never matches: positions stay
            stored.append(StoredVar(shape, is_dataset and found.dtype.kind == "f"))
            del found
        names = optimizer_names(stored, self._optimizer, self._trainable_in_model_order())
        for index, name in zip(indices, names, strict=True):
            self._add(self._child(group, str(index)), path=name.path, slot_of=name.slot_of, optimizer_state=True)

    def _trainable_in_model_order(self) -> list[tuple[str, tuple[int, ...]]] | None:
        """(path, shape) of `model.trainable_variables`: layers in config order, or None without a config."""
        if not self.configs or any(path not in self.configs for path in self._trainable):
            return None
        return [(info.path or info.name, info.shape) for path in self.configs for info in self._trainable.get(path, [])]

    def layers(self) -> tuple[LayerConfig, ...]:
        return tuple(self._layers.values())

    def scan(self, progress: Progress | None = None, verified: VerifiedBytes | None = None) -> ScanResult:
        if self._zip is None:
            return super().scan(progress, verified)
        # One progress over both passes: the datasets, then every member's CRC-32 (a megabyte at a time).
        archive_bytes = sum(info.file_size for info in self._zip.infolist())
        datasets_total = 0

        def datasets_progress(done: int, total: int) -> None:
            nonlocal datasets_total
            datasets_total = total
            if progress:
                progress(done, total + archive_bytes)

        def archive_progress(done: int, total: int) -> None:
            if progress:
                progress(datasets_total + done, datasets_total + total)

        result = super().scan(datasets_progress)
        try:
            damage = damaged_member(self.location, self._zip, archive_progress)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            damage = self.location, str(error)
        if damage is None:
            return result
        problem = IntegrityProblem(ProblemKind.ARCHIVE_CORRUPT, *damage)
        return result._replace(problems=(*result.problems, problem))

    def close(self) -> None:
        super().close()
        if self._zip is not None:
            self._zip.close()
