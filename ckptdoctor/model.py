"""Plain frozen data shared by readers, analysis, rules and reporters."""

from __future__ import annotations

from enum import Enum

from ckptdoctor.errors import CheckpointError  # re-exported: readers and users import it from here
from ckptdoctor.typed import NamedTuple

__all__ = [
    "BATCHNORM_PARTS",
    "BATCHNORM_STATISTICS",
    "BatchNormLayer",
    "BatchNormStats",
    "CheckpointError",
    "Finding",
    "Format",
    "FormatFamily",
    "IntegrityProblem",
    "LayerConfig",
    "ProblemKind",
    "Report",
    "Role",
    "RulesRun",
    "Severity",
    "StatisticSummary",
    "Storage",
    "TensorInfo",
    "Variable",
]


# Records are named tuples (docs/ARCHITECTURE.md says why): made in one step and without a __dict__, which also
# matters at 100,000 tensors of several records each.

# The variables of a BatchNorm layer, in the order Keras stores them; the last two are its moving statistics.
BATCHNORM_PARTS = ("gamma", "beta", "moving_mean", "moving_variance")
BATCHNORM_STATISTICS = BATCHNORM_PARTS[2:]


class _ValueEnum(str, Enum):
    """A str enum that prints as its value (as `enum.StrEnum`, which Python 3.10 lacks), so messages read
    `keras-zip`, not `Format.KERAS_ZIP`."""

    def __str__(self) -> str:
        return str(self.value)


class Format(_ValueEnum):
    """What a checkpoint is, decided from its bytes (the JSON report's `format`)."""

    TF1_NAME_BASED = "tf1-name-based"
    TF2_OBJECT_BASED = "tf2-object-based"
    TF_SAVEDMODEL = "tf-savedmodel"
    TF_V1_LEGACY = "tf-v1-legacy"
    KERAS_H5 = "keras-h5"  # legacy Keras HDF5: model.save('x.h5') or save_weights('x.h5')
    KERAS_WEIGHTS_H5 = "keras-weights-h5"  # Keras 3 .weights.h5
    KERAS_ZIP = "keras-zip"  # Keras 3 .keras archive

    @property
    def family(self) -> FormatFamily:
        if self in (Format.TF1_NAME_BASED, Format.TF_V1_LEGACY):
            return FormatFamily.TF1
        if self in (Format.TF2_OBJECT_BASED, Format.TF_SAVEDMODEL):
            return FormatFamily.TF2
        return FormatFamily.KERAS


class FormatFamily(_ValueEnum):
    """Formats that share their causes and repairs: advice and hints are written per family."""

    TF1 = "tf1"  # name-based graphs saved by tf.train.Saver
    TF2 = "tf2"  # object-based tf.train.Checkpoint and SavedModel variables
    KERAS = "keras"  # Keras files: .h5, .weights.h5, .keras


class Storage(_ValueEnum):
    """How a checkpoint's bytes are laid out on disk (what a path resolves to)."""

    BUNDLE = "bundle"  # <prefix>.index + <prefix>.data-NNNNN-of-NNNNN (TF V2)
    V1 = "v1"  # one SSTable file of SavedTensorSlices (TF V1)
    HDF5 = "hdf5"  # a Keras HDF5 file
    ZIP = "zip"  # a .keras archive


class ProblemKind(_ValueEnum):
    """Damage a reader finds in bytes; each kind is reported by exactly one integrity rule (same slug)."""

    CRC_MISMATCH = "crc-mismatch"
    MISSING_DATA_SHARD = "missing-data-shard"
    TENSOR_OUT_OF_BOUNDS = "tensor-out-of-bounds"
    SIZE_MISMATCH = "size-mismatch"
    INDEX_UNSORTED = "index-unsorted"
    INDEX_MISSING_HEADER = "index-missing-header"
    INDEX_CORRUPT = "index-corrupt"
    DATASET_UNREADABLE = "dataset-unreadable"
    ARCHIVE_CORRUPT = "archive-corrupt"
    EXTERNAL_DATA = "external-data"


class Role(str, Enum):
    WEIGHT = "weight"
    BN_STATISTIC = "bn-statistic"
    OPTIMIZER_SLOT = "optimizer-slot"
    EMA = "ema"
    COUNTER = "counter"
    OTHER = "other"


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return ("info", "warning", "error").index(self.value)


class TensorInfo(NamedTuple):
    """What a reader knows about one stored tensor without reading its values."""

    name: str  # the exact key (TF) or dataset path (HDF5) in the file
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    path: str | None = None  # the model path to analyse by, where it differs from the key
    full_name: str | None = None  # the framework's own variable name, e.g. Keras `bn/moving_mean`
    slot_of: str | None = None  # for an optimizer slot: the path of the variable it belongs to
    optimizer_state: bool = False  # known from the file's structure to belong to an optimizer


class LayerConfig(NamedTuple):
    """A layer as a saved model configuration describes it (Keras config.json or model_config)."""

    path: str  # the scope its variables' paths start with
    class_name: str
    scale: bool = True  # BatchNormalization: has gamma
    center: bool = True  # BatchNormalization: has beta
    momentum: float | None = None  # BatchNormalization: the decay of its moving statistics, where recorded
    trainable: bool = True  # False: frozen by design (Keras `trainable: false`)

    @property
    def is_batchnorm(self) -> bool:
        return self.class_name in ("BatchNormalization", "SyncBatchNormalization")

    @property
    def batchnorm_parts(self) -> tuple[str, ...]:
        """The variables Keras stores for this BatchNormalization, in its weight order."""
        kept = {"gamma": self.scale, "beta": self.center}
        return tuple(part for part in BATCHNORM_PARTS if kept.get(part, True))


class Variable(NamedTuple):
    """A tensor as the report shows it: its place in the model and its role."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    role: Role
    layer: str  # the enclosing scope ("" at the top level)
    path: str  # the model path: the key itself for TF1, the object path for TF2, layer/weight for Keras
    full_name: str | None = None


class BatchNormLayer(NamedTuple):
    """One BatchNorm layer: the checkpoint keys of the parameters and statistics it holds."""

    layer: str
    gamma: str | None = None
    beta: str | None = None
    moving_mean: str | None = None
    moving_variance: str | None = None

    @property
    def missing_statistics(self) -> tuple[str, ...]:
        return tuple(s for s in BATCHNORM_STATISTICS if getattr(self, s) is None)

    @property
    def statistics(self) -> tuple[str, str] | None:
        """The keys of (moving_mean, moving_variance) where both are stored."""
        if self.moving_mean is None or self.moving_variance is None:
            return None
        return self.moving_mean, self.moving_variance


class Finding(NamedTuple):
    code: str
    name: str
    severity: Severity
    subject: str  # what `inspect` shows: the layer's or variable's model path or framework name
    message: str
    hint: str  # the next step, written for the checkpoint's format family
    key: str | None = None  # the raw checkpoint key or layer path, where it differs from the subject
    detail: str | None = None  # the message without what the rule's title already says, for one line per subject


class IntegrityProblem(NamedTuple):
    """Damage a reader found while reading bytes; rules turn these into findings."""

    kind: ProblemKind  # reported by the integrity rule that declares it
    subject: str
    detail: str


class LayerDecay(NamedTuple):
    """The decay d a BatchNorm layer's moving statistics are updated with: v <- d*v + (1-d)*batch_value."""

    layer: str
    decay: float
    source: str  # where d was read: "meta-graph", "keras-config", "--decay"
    frozen: bool = False  # the layer is not trainable, so its statistics stay as loaded by design


class StatisticsUpdates(NamedTuple):
    """How far BatchNorm moving statistics can have moved: update steps and each layer's decay, where found.

    After N updates at decay d, a statistic still holds d**N of the value training started from."""

    steps: int | None
    steps_source: str | None  # e.g. "global_step", "optimizer/iterations", "the prefix", "--steps"
    layers: tuple[LayerDecay, ...] = ()
    note: str | None = None  # why a decay source that exists gave nothing, e.g. an unreadable .meta


class StatisticSummary(NamedTuple):
    """One moving statistic of one layer in a fixed handful of numbers (what the HTML report draws).

    min, max, mean and the quartiles are over the finite values; None where there are none."""

    size: int  # values summarised, NaN and Inf included (the JSON report's `count`)
    nonfinite: int  # NaN and Inf values
    min: float | None
    q1: float | None
    median: float | None
    q3: float | None
    max: float | None
    mean: float | None


class BatchNormStats(NamedTuple):
    """A BatchNorm layer's moving statistics summarised (None: not stored, unreadable or not numeric), and with
    a reference how far each moved from the reference's layer: max|a - b| / max(max|a|, max|b|), from 0
    (identical) to 2 (None: no matching layer, different shapes, or no finite pair)."""

    layer: str
    moving_mean: StatisticSummary | None
    moving_variance: StatisticSummary | None
    mean_change: float | None = None
    variance_change: float | None = None


class RulesRun(NamedTuple):
    """Which rules of the catalogue a check or match evaluated: what the CI reports (JUnit, SARIF) may call run.

    A rule of another command is in neither list; one of this command that lacked an input (BN003 without
    `--reference`) is skipped, with why."""

    ran: tuple[str, ...]  # rule codes, in catalogue order
    skipped: tuple[tuple[str, str], ...] = ()  # (rule code, what it needs: "needs --reference")


class Report(NamedTuple):
    """The result of inspect and check: one schema for both, serialised as the JSON report."""

    path: str
    format: str
    resolved: str
    note: str | None
    file: str  # the one file that stands for the checkpoint: the .index of a bundle, else the file itself
    variables: tuple[Variable, ...]
    batchnorm: tuple[BatchNormLayer, ...]
    findings: tuple[Finding, ...] = ()
    updates: StatisticsUpdates | None = None  # decay and steps found (None: neither)
    batchnorm_stats: tuple[BatchNormStats, ...] | None = None  # check only (inspect reads no values)
    rules: RulesRun | None = None  # check and match: the rules evaluated (None: inspect, which runs none)
