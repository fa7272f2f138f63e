"""Names for the variables a Keras optimizer stores in `optimizer/vars/<i>` of a `.keras` / `.weights.h5`.

The file records only positions. Keras loads them back by position into `optimizer.variables`, whose order
(measured with Keras 3.15 and tf_keras 2.21, and matching the tf.keras 2.15 file in shared/realworld) is:

- the step counter `iteration`;
- Keras 3 only: `learning_rate`, unless the learning rate is a schedule;
- the slots: runs of slot kinds, each run interleaved over the model's trainable variables in their order
  (Adam: momentum and velocity per variable, then with amsgrad a run of velocity_hat; RMSprop: a run of
  velocity, then of momentum, then of average_gradient);
- Keras 3 Nadam: a scalar `u_product` last.

A slot is named after its variable only when the optimizer's class and settings (config.json), the stored
count and every slot's shape all agree with that layout; otherwise the slots keep their positions. The step
counter and a scalar learning rate are named in either case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.typed import NamedTuple

if TYPE_CHECKING:
    from typing import Any

    Settings = dict[str, Any]

Runs = list[tuple[str, ...]]
Layout = tuple[tuple[str, ...], Runs, tuple[str, ...]]  # (header, slot runs, trailer)

ITERATIONS = "iterations"
LEARNING_RATE = "learning_rate"
OPTIMIZER_PREFIX = "optimizer"


def _adam(velocity_hat: str) -> Callable[[Settings], Runs]:
    return lambda c: [("momentum", "velocity")] + ([(velocity_hat,)] if c.get("amsgrad") else [])


def _rmsprop(c: Settings) -> Runs:
    momentum: Runs = [("momentum",)] if c.get("momentum") else []
    return [("velocity",), *momentum] + ([("average_gradient",)] if c.get("centered") else [])


# Slot kinds by optimizer class, as `optimizer.variables` names them (Keras 3: `adam/<var>_momentum`).
KERAS3_SLOTS: dict[str, Callable[[Settings], Runs]] = {
    "Adam": _adam("velocity_hat"),
    "AdamW": _adam("velocity_hat"),
    "Adamax": lambda c: [("momentum", "norm")],
    "Nadam": lambda c: [("momentum", "velocity")],
    "SGD": lambda c: [("momentum",)] if c.get("momentum") else [],
    "RMSprop": _rmsprop,
    "Adagrad": lambda c: [("accumulator",)],
    "Adadelta": lambda c: [("accumulated_grad", "accumulated_delta_var")],
    "Ftrl": lambda c: [("accumulator", "linear")],
    "Lion": lambda c: [("momentum",)],
}
KERAS3_TRAILERS = {"Nadam": ("u_product",)}
# tf.keras 2.11+ (`Adam/m/<var>`): its SGD creates momentum slots whatever the momentum.
TF_KERAS_SLOTS: dict[str, Callable[[Settings], Runs]] = {
    "Adam": lambda c: [("m", "v")] + ([("vhat",)] if c.get("amsgrad") else []),
    "AdamW": lambda c: [("m", "v")] + ([("vhat",)] if c.get("amsgrad") else []),
    "Adamax": lambda c: [("m", "u")],
    "Nadam": lambda c: [("m", "v")],
    "SGD": lambda c: [("m",)],
    "RMSprop": _rmsprop,
    "Adagrad": KERAS3_SLOTS["Adagrad"],
    "Adadelta": KERAS3_SLOTS["Adadelta"],
    "Ftrl": KERAS3_SLOTS["Ftrl"],
    "Lion": lambda c: [("m",)],
}


class StoredVar(NamedTuple):
    """What naming needs of one stored variable."""

    shape: tuple[int, ...]
    is_float: bool


class OptimizerName(NamedTuple):
    path: str
    slot_of: str | None = None  # the model variable a slot belongs to


class OptimizerSpec(NamedTuple):
    """The optimizer as config.json and metadata.json describe it."""

    class_name: str
    settings: Settings
    keras3: bool | None  # None: the writer's Keras version is not recorded


def optimizer_spec(config: Any, keras_version: str | None) -> OptimizerSpec | None:
    """The compiled optimizer from a model config, or None where the config records none."""
    compiled = config.get("compile_config") if isinstance(config, dict) else None
    optimizer = compiled.get("optimizer") if isinstance(compiled, dict) else None
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("class_name"), str):
        return None
    settings = optimizer.get("config")
    major = (keras_version or "").split(".")[0]
    keras3 = int(major) >= 3 if major.isdecimal() else None
    class_name = optimizer["class_name"].rpartition(">")[2]  # `Custom>Adam` registered names
    return OptimizerSpec(class_name, settings if isinstance(settings, dict) else {}, keras3)


def _layouts(spec: OptimizerSpec) -> list[Layout]:
    """(header, slot runs, trailer) for each family the writer may be, Keras 3 first."""
    layouts: list[Layout] = []
    if spec.keras3 is not False and spec.class_name in KERAS3_SLOTS:
        schedule = isinstance(spec.settings.get(LEARNING_RATE), dict)
        header: tuple[str, ...] = (ITERATIONS,) if schedule else (ITERATIONS, LEARNING_RATE)
        trailer = KERAS3_TRAILERS.get(spec.class_name, ())
        layouts.append((header, KERAS3_SLOTS[spec.class_name](spec.settings), trailer))
    if spec.keras3 is not True and spec.class_name in TF_KERAS_SLOTS:
        layouts.append(((ITERATIONS,), TF_KERAS_SLOTS[spec.class_name](spec.settings), ()))
    return layouts


def _fits(header: tuple[str, ...], trailer: tuple[str, ...], stored: Sequence[StoredVar]) -> bool:
    leading, trailing = stored[: len(header)], stored[len(stored) - len(trailer) :] if trailer else []
    scalars = all(var.shape == () for var in (*leading, *trailing))
    return scalars and all(var.is_float == (name != ITERATIONS) for name, var in zip(header, leading, strict=False))


def _aligned(
    spec: OptimizerSpec, stored: Sequence[StoredVar], trainable: Sequence[tuple[str, tuple[int, ...]]]
) -> list[OptimizerName] | None:
    for header, runs, trailer in _layouts(spec):
        count = len(header) + sum(len(run) for run in runs) * len(trainable) + len(trailer)
        if count != len(stored) or not _fits(header, trailer, stored):
            continue
        names = [OptimizerName(f"{OPTIMIZER_PREFIX}/{name}") for name in header]
        for run in runs:
            names += [OptimizerName(f"{path}/{kind}", slot_of=path) for path, _ in trainable for kind in run]
        names += [OptimizerName(f"{OPTIMIZER_PREFIX}/{name}") for name in trailer]
        owners = dict(trainable)
        pairs = zip(names, stored, strict=True)
        if all(name.slot_of is None or owners[name.slot_of] == var.shape for name, var in pairs):
            return names
    return None


def optimizer_names(
    stored: Sequence[StoredVar],
    spec: OptimizerSpec | None,
    trainable: Sequence[tuple[str, tuple[int, ...]]] | None,
) -> list[OptimizerName]:
    """A name for each stored optimizer variable, in index order.

    `trainable` is the model's trainable variables (path, shape) in Keras's order, or None where that order
    is not known (no config.json)."""
    if spec is not None and trainable is not None:
        aligned = _aligned(spec, stored, trainable)
        if aligned is not None:
            return aligned
    names = [OptimizerName(f"{OPTIMIZER_PREFIX}/{index}") for index in range(len(stored))]
    if stored and stored[0].shape == () and not stored[0].is_float:
        names[0] = OptimizerName(f"{OPTIMIZER_PREFIX}/{ITERATIONS}")
    # Only Keras 3 stores the learning rate, as a scalar; a tf.keras file's index 1 is its first slot.
    keras3 = spec.keras3 if spec is not None else None
    if len(stored) > 1 and stored[1].shape == () and stored[1].is_float and keras3 is not False:
        names[1] = OptimizerName(f"{OPTIMIZER_PREFIX}/{LEARNING_RATE}")
    return names
