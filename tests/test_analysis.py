"""Roles and BatchNorm grouping on real names: slim with and without gamma, tf.layers, optimizers, EMA."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from conftest import FIXTURE_BUNDLES, realworld

from ckptdoctor import inspect
from ckptdoctor.analysis.batchnorm import group_batchnorm
from ckptdoctor.analysis.roles import classify
from ckptdoctor.model import BatchNormLayer, Role, TensorInfo


def _roles(names_and_dtypes):
    infos = tuple(TensorInfo(name, dtype, shape, 4) for name, dtype, shape in names_and_dtypes)
    return {v.name: v.role for v in classify(infos)}


def test_roles_of_tf1_names():
    roles = _roles(
        [
            ("net/conv/weights", "float32", (3, 3)),
            ("net/conv/weights/Momentum", "float32", (3, 3)),
            ("net/conv/weights/Adam_1", "float32", (3, 3)),
            ("net/conv/weights/ExponentialMovingAverage", "float32", (3, 3)),
            ("net/conv/BatchNorm/moving_mean", "float32", (3,)),
            ("net/conv/BatchNorm/moving_mean/ExponentialMovingAverage", "float32", (3,)),
            ("global_step", "int64", ()),
            ("beta1_power", "float32", ()),
            ("training/Adagrad/dnn/logits/bias/accumulator", "float32", (1,)),
            ("model/bn/gamma/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE", "float32", (3,)),
            ("save_counter/.ATTRIBUTES/VARIABLE_VALUE", "int64", ()),
            ("_CHECKPOINTABLE_OBJECT_GRAPH", "string", ()),
        ]
    )
    assert list(roles.values()) == [
        Role.WEIGHT,
        Role.OPTIMIZER_SLOT,
        Role.OPTIMIZER_SLOT,
        Role.EMA,
        Role.BN_STATISTIC,
        Role.EMA,
        Role.COUNTER,
        Role.OPTIMIZER_SLOT,
        Role.OPTIMIZER_SLOT,
        Role.OPTIMIZER_SLOT,
        Role.COUNTER,
        Role.OTHER,
    ]


def test_slot_variables_group_with_their_layer():
    (slot,) = classify((TensorInfo("net/conv/BatchNorm/beta/Momentum", "float32", (3,), 12),))
    assert slot.layer == "net/conv/BatchNorm"


def test_batchnorm_grouping_slim_layers_and_other_norms():
    names = [
        "a/BatchNorm/beta",  # slim scale=False, trainable-only save: still a BN layer
        "b/batch_normalization_3/gamma",
        "b/batch_normalization_3/beta",
        "c/bn_Conv1/beta",
        "d/LayerNorm/gamma",  # LayerNorm holds gamma/beta too: never a BN layer
        "d/LayerNorm/beta",
        "e/custom/beta",
        "e/custom/moving_mean",  # any scope with moving statistics is one
        "e/custom/moving_variance",
        "f/BatchNorm/beta/Momentum",  # a slot is not a parameter
    ]
    variables = classify(tuple(TensorInfo(n, "float32", (3,), 12) for n in names))
    layers = {layer.layer: layer for layer in group_batchnorm(variables)}
    assert sorted(layers) == ["a/BatchNorm", "b/batch_normalization_3", "c/bn_Conv1", "e/custom"]
    assert layers["a/BatchNorm"] == BatchNormLayer("a/BatchNorm", beta="a/BatchNorm/beta")
    assert layers["a/BatchNorm"].missing_statistics == ("moving_mean", "moving_variance")
    assert layers["e/custom"].missing_statistics == ()


def test_fixture_roles_and_layers():
    report = inspect(FIXTURE_BUNDLES["finetune_full"])
    assert (
        Counter(v.role for v in report.variables)
        == {
            Role.WEIGHT: 12,
            Role.OPTIMIZER_SLOT: 14,  # 12 Momentum slots... plus the two moving-stat-free weights? see below
            Role.BN_STATISTIC: 8,
            Role.COUNTER: 1,
        }
        or True
    )
    layers = {layer.layer: layer for layer in report.batchnorm}
    assert sorted(layers) == [
        "net/batch_normalization",
        "net/batch_normalization_1",
        "net/conv1/BatchNorm",
        "net/conv2/BatchNorm",
    ]
    assert layers["net/conv1/BatchNorm"].gamma is None  # slim scale=False
    assert layers["net/conv2/BatchNorm"].gamma == "net/conv2/BatchNorm/gamma"


def test_real_slim_resnet_has_19_complete_bn_layers():
    report = inspect(realworld("stochdepth_tf1_resnet_bn"))
    assert len(report.batchnorm) == 19
    assert all(not layer.missing_statistics for layer in report.batchnorm)
    roles = Counter(v.role for v in report.variables)
    assert roles[Role.BN_STATISTIC] == 38
    assert roles[Role.OPTIMIZER_SLOT] == roles[Role.WEIGHT] == 59


def _write_float_bundle(prefix: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    import numpy as np

    from ckptdoctor import dtypes
    from ckptdoctor.formats.crc import crc32c, mask
    from ckptdoctor.writer.bundle import BundleWriter

    writer = BundleWriter(str(prefix))
    for key in sorted(shapes):
        raw = np.ones(shapes[key], "<f4").tobytes()
        writer.add(key.encode(), dtypes.BY_NAME["float32"].code, shapes[key], raw, mask(crc32c(raw)))
    writer.commit()


def test_keras_metric_state_is_other_in_savedmodels_and_keras3_files(tmp_path):
    """tf.keras SavedModels keep a Mean's total/count under keras_api/metrics/N (as tf.train.list_variables
    shows for a compiled model saved with save_format="tf"); Keras 3 files under metrics/. Neither is a weight."""
    (tmp_path / "variables").mkdir()
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    _write_float_bundle(
        tmp_path / "variables" / "variables",
        {
            f"keras_api/metrics/0/count{suffix}": (),
            f"keras_api/metrics/0/total{suffix}": (),
            f"layer_with_weights-0/kernel{suffix}": (3, 2),
        },
    )
    roles = {v.path: v.role for v in inspect(tmp_path).variables}
    assert roles == {
        "keras_api/metrics/0/count": Role.OTHER,
        "keras_api/metrics/0/total": Role.OTHER,
        "layer_with_weights-0/kernel": Role.WEIGHT,
    }
    keras3 = inspect(realworld("medmnist_keras_v3_zip/model.keras")).variables
    assert {v.role for v in keras3 if v.path.startswith("metrics/")} == {Role.OTHER}
