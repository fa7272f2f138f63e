"""Generate fixtures/keras/ with real Keras 3 (and Keras 2 via tf-keras): run once, commit.

    pip install -e '.[tf]' && python scripts/make_keras_fixtures.py

One small conv net with three BatchNormalization layers (default, scale=False, center=False), trained a
few steps so the statistics moved, saved as:

  keras/healthy/model.keras, model.weights.h5, model.h5 (legacy full model with optimizer weights),
                ckpt/model (tf.train.Checkpoint(model=...)), savedmodel/ (tf.saved_model.save)
  keras/stats_removed/...   the same files without the moving statistics: .weights.h5, .h5 and .keras
                            edited with h5py the way a truncating converter leaves them; ckpt/model written
                            by TensorFlow from the same model whose BatchNorm layers track no statistics
  keras/stats_init/...      statistics reset to 0/1 (.weights.h5, ckpt/model)
  keras/stats_nan/...       NaN in bn_default's moving_mean (.weights.h5, ckpt/model)
  keras2/model.h5, model_weights.h5, ckpt/model   the same net in tf-keras (Keras 2): `:0` names,
                            fixed-length byte attributes, .OPTIMIZER_SLOT keys
  keras/inputs.npy          a batch to compare predictions on
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py
import keras
import numpy as np
import tensorflow as tf

ROOT = Path(__file__).resolve().parent.parent / "fixtures"
BN_LAYERS = {"bn_default": {}, "bn_noscale": {"scale": False}, "bn_nocenter": {"center": False}}


class StatlessBatchNorm(keras.layers.Layer):
    """A BatchNorm stand-in holding only gamma/beta: its checkpoint is a BatchNorm that lost its statistics."""

    def __init__(self, scale=True, center=True, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.center = scale, center

    def build(self, shape):
        if self.scale:
            self.gamma = self.add_weight(name="gamma", shape=(shape[-1],), initializer="ones")
        if self.center:
            self.beta = self.add_weight(name="beta", shape=(shape[-1],), initializer="zeros")

    def call(self, x):
        return x


def build(layers_module, batchnorm=None):
    batchnorm = batchnorm or layers_module.BatchNormalization
    inputs = layers_module.Input((8, 8, 3))
    x = inputs
    for index, (name, options) in enumerate(BN_LAYERS.items()):
        x = layers_module.Conv2D(8, 3, padding="same", name=f"conv_{index}")(x)
        x = batchnorm(name=name, **options)(x)
        x = layers_module.ReLU()(x)
    x = layers_module.GlobalAveragePooling2D()(x)
    return inputs, layers_module.Dense(4, name="head")(x)


def train(model) -> None:
    rng = np.random.default_rng(0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    images = rng.normal(0.5, 1.5, size=(32, 8, 8, 3)).astype("float32")
    model.fit(images, rng.integers(0, 4, 32), batch_size=8, epochs=2, verbose=0)


def save_all(model, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / "model.keras")
    model.save_weights(directory / "model.weights.h5")
    model.save(directory / "model.h5")
    tf.train.Checkpoint(model=model).write(str(directory / "ckpt" / "model"))


def drop_statistics_weights_h5(source: Path, target: Path) -> None:
    """Delete each BatchNorm container's moving_mean/moving_variance (the last two vars)."""
    shutil.copy(source, target)
    with h5py.File(target, "r+") as file:
        for container in ("batch_normalization", "batch_normalization_1", "batch_normalization_2"):
            variables = file[f"layers/{container}/vars"]
            count = len(variables)
            del variables[str(count - 1)], variables[str(count - 2)]


def drop_statistics_legacy_h5(source: Path, target: Path) -> None:
    shutil.copy(source, target)
    with h5py.File(target, "r+") as file:
        for layer in BN_LAYERS:
            group = file["model_weights"][layer]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
            kept = [n for n in names if not n.endswith(("moving_mean", "moving_variance"))]
            for name in set(names) - set(kept):
                del group[name]
            group.attrs["weight_names"] = np.array(kept, dtype=h5py.string_dtype())


def replace_zip_member(source: Path, target: Path, member: str, data: bytes) -> None:
    """A copy of a zip with one member's bytes replaced, the rest and their order unchanged."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info, data if info.filename == member else old.read(info.filename))


def edit_statistics(model, directory: Path, edit) -> None:
    """Save .weights.h5 and a TF2 checkpoint after `edit(name, mean, variance)` changed the statistics."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for name in BN_LAYERS:
        layer = clone.get_layer(name)
        mean, variance = edit(name, layer.moving_mean.numpy(), layer.moving_variance.numpy())
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
    directory.mkdir(parents=True, exist_ok=True)
    clone.save_weights(directory / "model.weights.h5")
    tf.train.Checkpoint(model=clone).write(str(directory / "ckpt" / "model"))


def keras3() -> None:
    keras.utils.set_random_seed(1)
    inputs, outputs = build(keras.layers)
    model = keras.Model(inputs, outputs)
    train(model)
    healthy = ROOT / "keras" / "healthy"
    save_all(model, healthy)
    tf.saved_model.save(model, str(healthy / "savedmodel"))
    np.save(ROOT / "keras" / "inputs.npy", np.random.default_rng(5).normal(0.5, 1.5, (4, 8, 8, 3)).astype("float32"))

    removed = ROOT / "keras" / "stats_removed"
    removed.mkdir(parents=True)
    drop_statistics_weights_h5(healthy / "model.weights.h5", removed / "model.weights.h5")
    drop_statistics_legacy_h5(healthy / "model.h5", removed / "model.h5")
    replace_zip_member(
        healthy / "model.keras",
        removed / "model.keras",
        "model.weights.h5",
        (removed / "model.weights.h5").read_bytes(),
    )
    statless_inputs, statless_outputs = build(keras.layers, batchnorm=StatlessBatchNorm)
    statless = keras.Model(statless_inputs, statless_outputs)
    for layer, source in zip(statless.layers, model.layers, strict=True):  # same structure, same order
        layer.set_weights(
            [w for w, v in zip(source.get_weights(), source.weights, strict=True) if "moving" not in v.path]
        )
    tf.train.Checkpoint(model=statless).write(str(removed / "ckpt" / "model"))

    edit_statistics(model, ROOT / "keras" / "stats_init", lambda _, m, v: (np.zeros_like(m), np.ones_like(v)))

    def nan_in_first(name, mean, variance):
        if name == "bn_default":
            mean = mean.copy()
            mean[0] = np.nan
        return mean, variance

    edit_statistics(model, ROOT / "keras" / "stats_nan", nan_in_first)


def keras2() -> None:
    import tf_keras

    tf_keras.utils.set_random_seed(1)
    inputs, outputs = build(tf_keras.layers)
    model = tf_keras.Model(inputs, outputs)
    train(model)
    directory = ROOT / "keras2"
    directory.mkdir(parents=True)
    model.save(directory / "model.h5")
    model.save_weights(directory / "model_weights.h5")
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(str(directory / "ckpt" / "model"))


def main() -> None:
    for name in ("keras", "keras2"):
        shutil.rmtree(ROOT / name, ignore_errors=True)
    keras3()
    keras2()
    total = sum(p.stat().st_size for name in ("keras", "keras2") for p in (ROOT / name).rglob("*") if p.is_file())
    print(f"wrote {ROOT / 'keras'} and {ROOT / 'keras2'} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
