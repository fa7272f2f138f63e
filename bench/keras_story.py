"""The Keras side of the story on a real Keras application (MobileNetV2, 52 BatchNorm layers), outside the repo.

    pip install -e '.[tf]' && python bench/keras_story.py /tmp/ckptdoctor-keras

Saves the model as .keras, .weights.h5, legacy .h5 and tf.train.Checkpoint (plus a sharded object-based
checkpoint, a sharded SavedModel and a SavedModel holding a string variable, all written by TensorFlow),
damages seven BatchNorm layers three ways, and checks that ckptdoctor finds every BN layer, flags exactly
the damaged ones, patches a .weights.h5 that lost its statistics so that Keras loads it and predicts what the
original predicts, and lists every TF-written file exactly as TensorFlow does. Exits 1 if any claim fails.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py
import keras
import numpy as np
import tensorflow as tf

from ckptdoctor import check, inspect
from ckptdoctor.formats import open_checkpoint
from ckptdoctor.patch import patch

DAMAGED = 7  # BatchNorm layers damaged in each variant


def build() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(64, 64, 3), weights=None, classes=10)
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(8, 64, 64, 3)), rng.integers(0, 10, 8), epochs=1, verbose=0)
    return model


def bn_names(model) -> list[str]:
    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def edited(model, names, edit):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for name in names:
        layer = clone.get_layer(name)
        mean, variance = edit(layer.moving_mean.numpy(), layer.moving_variance.numpy())
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
    return clone


def drop_statistics(weights_h5: Path, out: Path, names: list[str]) -> None:
    shutil.copy(weights_h5, out)
    with h5py.File(out, "r+") as file:
        for container in file["layers"]:
            variables = file[f"layers/{container}/vars"]
            if variables.attrs.get("name") in names:
                count = len(variables)
                del variables[str(count - 1)], variables[str(count - 2)]


def tf_listing_matches(path) -> bool:
    reader, resolved = open_checkpoint(path)
    ours = sorted((t.name, t.shape) for t in reader.tensors())
    reader.close()
    return ours == sorted((n, tuple(s)) for n, s in tf.train.list_variables(resolved.location))


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ckptdoctor-keras")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    model = build()
    names = bn_names(model)
    damaged = names[3 : 3 + DAMAGED]
    files = {"keras": root / "m.keras", "weights": root / "m.weights.h5", "h5": root / "m.h5"}
    model.save(files["keras"])
    model.save_weights(files["weights"])
    model.save(files["h5"])
    tf.train.Checkpoint(model=model).write(str(root / "ckpt" / "model"))
    files["ckpt"] = root / "ckpt" / "model"
    claims: list[tuple[str, bool]] = []

    for kind, path in files.items():
        found = {layer.layer.rsplit("/", 1)[-1] for layer in inspect(path).batchnorm}
        count = len(inspect(path).batchnorm)
        claims.append(
            (
                f"{kind}: {count} of {len(names)} BatchNorm layers found, check passes",
                count == len(names) and check(path).findings == (),
            )
        )
        if kind != "ckpt":
            claims.append((f"{kind}: layers found by name", found == set(names)))

    def zero_one(mean, variance):
        return np.zeros_like(mean), np.ones_like(variance)

    def nan(mean, variance):
        mean = mean.copy()
        mean[0] = np.nan
        return mean, variance

    for label, edit, rule in (("reset to 0/1", zero_one, "bn-stats-at-init"), ("NaN", nan, "nonfinite-values")):
        clone = edited(model, damaged, edit)
        variants = {
            "weights": root / f"{rule}.weights.h5",
            "keras": root / f"{rule}.keras",
            "h5": root / f"{rule}.h5",
            "ckpt": root / f"{rule}-ckpt" / "model",
        }
        clone.save_weights(variants["weights"])
        clone.save(variants["keras"])
        clone.save(variants["h5"])
        tf.train.Checkpoint(model=clone).write(str(variants["ckpt"]))
        for kind, path in variants.items():
            counts = Counter(f.name for f in check(path).findings)
            claims.append((f"{kind} {label}: {dict(counts)}", counts == {rule: DAMAGED}))

    removed = root / "removed.weights.h5"
    drop_statistics(files["weights"], removed, damaged)
    counts = Counter(f.name for f in check(removed).findings)
    claims.append((f"weights statistics removed: {dict(counts)}", counts == {"bn-missing-moving-stats": DAMAGED}))
    fixed = root / "fixed.weights.h5"
    patch(removed, files["weights"], fixed)
    fresh = keras.models.clone_model(model)
    fresh.load_weights(fixed)
    images = np.random.default_rng(1).normal(size=(4, 64, 64, 3))
    same = np.array_equal(fresh.predict(images, verbose=0), model.predict(images, verbose=0))
    claims.append(("patched .weights.h5 loads in Keras with the original predictions", same))

    sharded = root / "sharded" / "ckpt"
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=200_000)
    options = tf.train.CheckpointOptions(experimental_sharding_callback=policy)
    tf.train.Checkpoint(model=model).write(str(sharded), options=options)
    shards = len(list(sharded.parent.glob("ckpt.data-*")))
    claims.append(
        (
            f"sharded object-based ({shards} shards): listing equals TF's, BN layers found, check passes",
            shards > 1
            and tf_listing_matches(sharded)
            and len(inspect(sharded).batchnorm) == len(names)
            and check(sharded).findings == (),
        )
    )
    savedmodel = root / "savedmodel_sharded"
    tf.saved_model.save(
        model, str(savedmodel), options=tf.saved_model.SaveOptions(experimental_sharding_callback=policy)
    )
    healthy_savedmodel = len(inspect(savedmodel).batchnorm) == len(names) and check(savedmodel).findings == ()
    claims.append(
        (
            "sharded SavedModel: listing equals TF's, BN layers found, check passes",
            tf_listing_matches(savedmodel / "variables" / "variables") and healthy_savedmodel,
        )
    )
    module = tf.Module()
    module.label = tf.Variable("mobilenet-v2 ünïcode")
    module.scale = tf.Variable([1.0, 2.0])
    tf.saved_model.save(module, str(root / "savedmodel_string"))
    reader, _ = open_checkpoint(root / "savedmodel_string")
    label = reader.read("label/.ATTRIBUTES/VARIABLE_VALUE").item()
    reader.close()
    claims.append(("SavedModel with a string variable: value read", label == "mobilenet-v2 ünïcode".encode()))

    for text, ok in claims:
        print(f"{'ok  ' if ok else 'FAIL'} {text}")
    sys.exit(0 if all(ok for _, ok in claims) else 1)


if __name__ == "__main__":
    main()
