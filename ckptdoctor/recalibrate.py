"""Recompute BatchNorm population statistics by running the model in training mode over sample inputs, and
write a new checkpoint holding them (needs the [tf] extra).

The repair for a checkpoint without a usable full save of the same run: statistics missing
(`var_list=tf.trainable_variables()`), never updated (0/1, or still the pretrained ones) or stale. Each
BatchNorm layer's batch statistics are read per batch (the TF1 graph's own `FusedBatchNorm*` outputs or
`moments`; Keras layers run with momentum 0) and combined exactly into the population mean and biased
variance over every value each channel saw, batch × spatial positions: what training-mode BatchNorm
normalises with when the whole sample set is one batch. The runners live in `recalibrate_tf1` and
`recalibrate_keras`; this module loads the data, accumulates, plans the `Edits` and writes them.
"""

from __future__ import annotations

import importlib
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.errors import CkptDoctorError, ConfigError, MissingExtraError, ModelError, OutputError
from ckptdoctor.formats import Resolved
from ckptdoctor.model import FormatFamily
from ckptdoctor.typed import NamedTuple, Protocol

if TYPE_CHECKING:
    from typing import Any

    import numpy as np

    from ckptdoctor.analysis.checkpoint import Checkpoint
    from ckptdoctor.writer.base import Edits

    Batch = Any  # one batch as fed: an ndarray (one input) or a dict of input name -> ndarray

DEFAULT_BATCH_SIZE = 32
MIN_SAMPLES = 1024  # below this many samples the estimate is noisy enough to warn about
MAX_NPZ_MEMBER_BYTES = 4 << 30  # one array of an .npz is decompressed into memory whole
MAX_NPZ_MEMBERS = 1024
MAX_FEEDS = 64
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
# A batch array must hold numbers (no objects, strings or records): bool, integers, floats.
NUMERIC_KINDS = frozenset("biuf")


class DataError(ConfigError):
    """The sample data (--data) cannot be read or does not fit the model."""


class RecalibrateError(CkptDoctorError):
    """The statistics cannot be recomputed as asked (no BatchNorm in training mode, non-finite values, ...)."""


# --------------------------------------------------------------------------------------------------- data


class DataSpec(NamedTuple):
    """Where the samples come from and how many are used."""

    source: str  # a .npy or .npz file (sniffed by its bytes), or package.module:function
    batch_size: int = DEFAULT_BATCH_SIZE
    batches: int | None = None  # stop after this many batches
    samples: int | None = None  # stop after this many samples (the last batch is cut)


def _sniff(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(len(NPY_MAGIC))
    except OSError as error:
        raise DataError(f"{path}: cannot read the sample data ({error.strerror})") from None


def _checked_array(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype.kind not in NUMERIC_KINDS:
        raise DataError(f"{where}: sample arrays must hold numbers, not {array.dtype}")
    if array.ndim == 0:
        raise DataError(f"{where}: a sample array needs a batch dimension, this one is a scalar")
    return array


def _npy(path: str) -> np.ndarray:
    """The array of an .npy file, memory-mapped: batches are copied out one at a time."""
    import numpy as np

    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable .npy array ({error})") from None
    return _checked_array(array, path)


def _npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file by name; each member's declared size is bounded before it is inflated."""
    import numpy as np

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npz archive ({error})") from None
    if len(members) > MAX_NPZ_MEMBERS:
        raise DataError(f"{path}: more than {MAX_NPZ_MEMBERS} arrays, not read")
    for member in members:
        if member.file_size > MAX_NPZ_MEMBER_BYTES:
            raise DataError(f"{path}: {member.filename} is larger than {MAX_NPZ_MEMBER_BYTES >> 30} GiB, not read")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for name in archive.files:
                arrays[name] = _checked_array(archive[name], f"{path}: {name}")
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: an array cannot be read ({error})") from None
    if not arrays:
        raise DataError(f"{path}: the archive holds no arrays")
    lengths = {len(array) for array in arrays.values()}
    if len(lengths) > 1:
        raise DataError(f"{path}: the arrays differ in their number of samples ({sorted(lengths)})")
    return arrays


def _function(spec: str) -> Iterable[Batch]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise DataError(f"{spec}: --data is neither an .npy/.npz file nor package.module:function")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise DataError(f"{spec}: cannot import the data function ({error})") from None
    batches = function()
    if not isinstance(batches, Iterable):
        raise DataError(f"{spec}: the data function returned {type(batches).__name__}, not an iterable of batches")
    return batches


def _slices(arrays: np.ndarray | dict[str, np.ndarray], batch_size: int) -> Iterator[Batch]:
    import numpy as np

    total = len(next(iter(arrays.values()))) if isinstance(arrays, dict) else len(arrays)
    for start in range(0, total, batch_size):
        if isinstance(arrays, dict):
            yield {name: np.array(array[start : start + batch_size]) for name, array in arrays.items()}
        else:
            yield np.array(arrays[start : start + batch_size])


def batch_rows(batch: Batch, where: str) -> int:
    """The number of samples in a batch; every array of a dict batch must agree."""
    import numpy as np

    arrays = list(batch.values()) if isinstance(batch, Mapping) else [batch]
    rows = set()
    for array in arrays:
        if not isinstance(array, np.ndarray):
            raise DataError(f"{where}: a batch must be an array or a dict of arrays, not {type(array).__name__}")
        _checked_array(array, where)
        rows.add(len(array))
    if len(rows) != 1:
        raise DataError(f"{where}: the arrays of one batch differ in their number of samples ({sorted(rows)})")
    return rows.pop()


def _cut(batch: Batch, rows: int) -> Batch:
    if isinstance(batch, Mapping):
        return {name: array[:rows] for name, array in batch.items()}
    return batch[:rows]


def load_batches(spec: DataSpec) -> Iterator[tuple[Batch, int]]:
    """(batch, samples in it) for every batch the spec allows; files are sniffed by their bytes."""
    if spec.batch_size < 1:
        raise DataError(f"{spec.source}: the batch size must be at least 1")
    if os.path.isfile(spec.source):
        magic = _sniff(spec.source)
        if magic == NPY_MAGIC:
            batches: Iterable[Batch] = _slices(_npy(spec.source), spec.batch_size)
        elif magic.startswith(ZIP_MAGIC):
            batches = _slices(_npz(spec.source), spec.batch_size)
        else:
            raise DataError(f"{spec.source}: sample data must be an .npy or .npz file (numpy.save / numpy.savez)")
    elif os.path.exists(spec.source):
        raise DataError(f"{spec.source}: not a regular file")
    else:
        batches = _function(spec.source)
    taken = 0
    for index, batch in enumerate(batches):
        if spec.batches is not None and index >= spec.batches:
            return
        rows = batch_rows(batch, f"{spec.source}: batch {index}")
        if spec.samples is not None and taken + rows > spec.samples:
            rows = spec.samples - taken
            batch = _cut(batch, rows)
        if rows == 0:
            return
        taken += rows
        yield batch, rows


# ------------------------------------------------------------------------------------------- statistics


class BatchMoments(NamedTuple):
    """One layer's statistics over one batch: per channel, the mean and biased variance of `size` values."""

    mean: np.ndarray
    variance: np.ndarray
    size: int  # values per channel: samples × spatial positions


class PopulationMoments:
    """Per-channel mean and biased variance over every batch, combined exactly (Chan et al.'s parallel
    algorithm in float64): the statistics of the whole sample set taken as one batch."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None  # sum of squared deviations from the running mean

    def add(self, batch: BatchMoments) -> None:
        import numpy as np

        mean = np.asarray(batch.mean, dtype=np.float64)
        m2 = np.asarray(batch.variance, dtype=np.float64) * batch.size
        if batch.size <= 0:
            return
        if self.mean is None or self._m2 is None:
            self.count, self.mean, self._m2 = batch.size, mean, m2
            return
        if mean.shape != self.mean.shape:
            raise RecalibrateError(f"a BatchNorm layer's channel count changed between batches: {mean.shape}")
        total = self.count + batch.size
        delta = mean - self.mean
        self.mean = self.mean + delta * (batch.size / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.count * batch.size / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        assert self._m2 is not None, "no batch was added"
        return self._m2 / self.count


class LayerStatistics(NamedTuple):
    """A BatchNorm layer the runner recomputes: its label and its statistics' variable names in the model
    (`net/conv1/BatchNorm/moving_mean`, `bn_default/moving_mean`), which name them in the checkpoint too."""

    label: str
    moving_mean: str
    moving_variance: str


class StatisticsRunner(Protocol):
    """Runs the model in training mode on one batch and returns each layer's batch statistics."""

    layers: tuple[LayerStatistics, ...]

    def run(self, batch: Batch, rows: int) -> list[BatchMoments]:
        """The batch statistics of every layer, in the order of `layers`."""
        ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------ the result


class LayerChange(NamedTuple):
    """How far one layer's statistics moved: the largest |new - old| / max(|new|, |old|) over channels, as
    `diff` measures it (None where the statistic was missing and is added)."""

    layer: str
    mean_change: float | None
    variance_change: float | None
    values: int  # values per channel the statistics were computed over


class RecalibrateResult(NamedTuple):
    checkpoint: str
    out: str
    written: tuple[str, ...]
    layers: tuple[LayerChange, ...]
    samples: int
    batches: int
    added: int  # statistics added where the checkpoint lacked them
    replaced: int  # statistics replaced
    resolved: Resolved
    state_change: str | None = None
    # BatchNorm layers of the checkpoint the model computed no statistics for: written as they were
    untouched: tuple[str, ...] = ()

    @property
    def few_samples(self) -> bool:
        return self.samples < MIN_SAMPLES


def _largest_change(old: np.ndarray | None, new: np.ndarray) -> float | None:
    import numpy as np

    if old is None or old.shape != new.shape:
        return None
    a, b = old.astype(np.float64), new.astype(np.float64)
    scale = np.maximum(np.abs(a), np.abs(b))
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(scale > 0, np.abs(a - b) / np.where(scale > 0, scale, 1.0), 0.0)
    relative = np.where(np.isfinite(relative), relative, 1.0)  # from NaN/Inf to finite: moved entirely
    return float(relative.max()) if relative.size else 0.0


class _Placement(NamedTuple):
    edits: Edits
    changes: tuple[LayerChange, ...]
    added: int
    replaced: int
    untouched: tuple[str, ...]  # the checkpoint's BatchNorm layers none of whose statistics the edits write


def plan_edits(checkpoint: Checkpoint, computed: list[tuple[LayerStatistics, PopulationMoments]]) -> _Placement:
    """Replacements for statistics the checkpoint holds, additions for those it lacks: a statistic is found
    by its checkpoint key, model path or framework name; a missing one goes to its BatchNorm layer."""
    import numpy as np

    from ckptdoctor.writer.base import Edits, NewTensor, Replacement, Values

    infos = {info.name: info for info in checkpoint.reader.tensors()}
    by_name: dict[str, str] = {}
    for variable in checkpoint.variables:
        for alias in {variable.name, variable.path, variable.full_name} - {None}:
            assert alias is not None
            by_name.setdefault(alias, variable.name)
    layers = {layer.layer: layer for layer in checkpoint.batchnorm}
    layers.update({checkpoint.layer_name(layer): layer for layer in checkpoint.batchnorm})
    is_tf1 = checkpoint.reader.format.family is FormatFamily.TF1
    replace, add, changes = [], [], []
    for statistics, moments in computed:
        values = {"moving_mean": moments.mean, "moving_variance": moments.variance}
        moved: dict[str, float | None] = {}
        for leaf, name in (("moving_mean", statistics.moving_mean), ("moving_variance", statistics.moving_variance)):
            array = values[leaf]
            assert array is not None
            key = by_name.get(name)
            if key is not None:
                info = infos[key]
                if info.shape != array.shape:
                    raise RecalibrateError(
                        f"{checkpoint.reader.location}: {key} is {info.dtype}{list(info.shape)} but the model "
                        f"computes {list(array.shape)} channels"
                    )
                replace.append(Replacement(key, Values(array.astype(info.dtype))))
                moved[leaf] = _largest_change(checkpoint.values(key), array)
                continue
            scope = name.rpartition("/")[0]
            layer = layers.get(scope)
            if layer is None and not is_tf1:
                raise RecalibrateError(
                    f"{checkpoint.reader.location}: no BatchNorm layer {scope} to hold the recomputed {leaf}"
                )
            holder = layer.layer if layer is not None else scope
            param = layer and (layer.gamma or layer.beta or layer.moving_mean or layer.moving_variance)
            dtype = infos[param].dtype if param else "float32"
            add.append(NewTensor(holder, leaf, Values(array.astype(np.dtype(dtype))), name))
            moved[leaf] = None
        changes.append(LayerChange(statistics.label, moved["moving_mean"], moved["moving_variance"], moments.count))
    written = {replacement.name for replacement in replace} | {tensor.layer for tensor in add}
    untouched = tuple(
        checkpoint.layer_name(layer)
        for layer in checkpoint.batchnorm
        if layer.layer not in written and not {layer.moving_mean, layer.moving_variance} & written
    )
    return _Placement(Edits(add=tuple(add), replace=tuple(replace)), tuple(changes), len(add), len(replace), untouched)


# -------------------------------------------------------------------------------------------- the command


def import_tensorflow(what: str = "recalibrate"):
    """TensorFlow, quietly; MissingExtraError where the [tf] extra is not installed."""
    from ckptdoctor.verify import _import_tensorflow

    try:
        return _import_tensorflow()
    except MissingExtraError:
        raise MissingExtraError(f"{what} needs TensorFlow: pip install 'ckptdoctor[tf]'") from None


def parse_feeds(feeds: Iterable[str]) -> dict[str, bool | int | float]:
    """`NAME=VALUE` pairs: VALUE is true/false, an integer or a float."""
    parsed: dict[str, bool | int | float] = {}
    for index, feed in enumerate(feeds):
        if index >= MAX_FEEDS:
            raise ConfigError(f"--feed: more than {MAX_FEEDS} feeds")
        name, equals, text = feed.partition("=")
        name, text = name.strip(), text.strip()
        if not equals or not name or not text:
            raise ConfigError(f"--feed {feed!r}: expected NAME=VALUE (e.g. is_training=true, keep_prob=1.0)")
        value: bool | int | float
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    raise ConfigError(
                        f"--feed {feed!r}: the value must be true, false, an integer or a number"
                    ) from None
        parsed[name] = value
    return parsed


def _runner(
    checkpoint: Checkpoint, meta_graph: str | None, model: str | None, input_name: str | None, feeds: dict
) -> StatisticsRunner:
    family = checkpoint.reader.format.family
    if model is not None:
        if meta_graph is not None:
            raise ConfigError("recalibrate takes --model (Keras and TF2) or --meta-graph (TF1 graphs), not both")
        from ckptdoctor.recalibrate_keras import KerasRunner

        return KerasRunner(import_tensorflow(), checkpoint, model)
    if family is not FormatFamily.TF1:
        raise ModelError(
            f"{checkpoint.reader.location}: a {checkpoint.reader.format} checkpoint is recalibrated through its "
            "model: give --model MODEL.keras or --model package.module:builder"
        )
    from ckptdoctor.recalibrate_tf1 import GraphRunner, training_graph

    graph = meta_graph if meta_graph is not None else training_graph(checkpoint.resolved.location)
    return GraphRunner(import_tensorflow(), checkpoint, graph, input_name, feeds)


def recalibrate(
    checkpoint_path: str | os.PathLike[str],
    data: DataSpec,
    out: str | os.PathLike[str],
    *,
    meta_graph: str | None = None,
    model: str | None = None,
    input_name: str | None = None,
    feeds: Mapping[str, bool | int | float] | None = None,
    force: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> RecalibrateResult:
    """Write CHECKPOINT with every BatchNorm layer's moving_mean and moving_variance recomputed over DATA.

    TF1 checkpoints run in their training graph (`PREFIX.meta`, or `meta_graph`); Keras files and TF2
    checkpoints in `model` (MODEL.keras or package.module:builder). Statistics the checkpoint holds are
    replaced, missing ones added; everything else is copied unchanged. `progress(samples_done, samples_total
    or None)` follows the batches."""
    from ckptdoctor.analysis.checkpoint import opened
    from ckptdoctor.writer.checkpoint import refuse_external_data, write_checkpoint

    with opened(checkpoint_path) as checkpoint:
        refuse_external_data([checkpoint.reader])
        runner = _runner(checkpoint, meta_graph, model, input_name, dict(feeds or {}))
        try:
            if not runner.layers:
                raise RecalibrateError(f"{checkpoint.reader.location}: the model has no BatchNorm layer to recalibrate")
            population = [PopulationMoments() for _ in runner.layers]
            samples = batches = 0
            total = data.samples
            for batch, rows in load_batches(data):
                for moments, batch_moments in zip(population, runner.run(batch, rows), strict=True):
                    moments.add(batch_moments)
                samples += rows
                batches += 1
                if progress:
                    progress(samples, total)
        finally:
            runner.close()
        if samples == 0:
            raise DataError(f"{data.source}: no samples")
        computed = list(zip(runner.layers, population, strict=True))
        _refuse_nonfinite(computed)
        placement = plan_edits(checkpoint, computed)
        written = write_checkpoint(checkpoint, placement.edits, out, force=force)
        return RecalibrateResult(
            checkpoint=checkpoint.reader.location,
            out=written.out,
            written=written.written,
            layers=placement.changes,
            samples=samples,
            batches=batches,
            added=placement.added,
            replaced=placement.replaced,
            resolved=written.resolved,
            state_change=written.state_change,
            untouched=placement.untouched,
        )


def _refuse_nonfinite(computed: list[tuple[LayerStatistics, PopulationMoments]]) -> None:
    import numpy as np

    for statistics, moments in computed:
        assert moments.mean is not None
        if not (np.isfinite(moments.mean).all() and np.isfinite(moments.variance).all()):
            raise RecalibrateError(
                f"{statistics.label}: the recomputed statistics are not finite (NaN or Inf in the data, or "
                "activations that overflow); nothing was written"
            )


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MIN_SAMPLES",
    "BatchMoments",
    "DataError",
    "DataSpec",
    "LayerChange",
    "LayerStatistics",
    "OutputError",
    "PopulationMoments",
    "RecalibrateError",
    "RecalibrateResult",
    "load_batches",
    "parse_feeds",
    "plan_edits",
    "recalibrate",
]
