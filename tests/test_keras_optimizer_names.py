"""`.keras` optimizer variables: named after the model variable they belong to, as Keras itself orders them.

Ground truth is `model.optimizer.variables` (Keras 3: `<opt>/<model>_<layer>_<var>_<kind>`; tf_keras:
`<kind>/<layer>/<var>:0`), listed by the Keras that loads the file by position."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from conftest import realworld

from ckptdoctor import inspect
from ckptdoctor.formats.keras_optimizer import OptimizerSpec, StoredVar, optimizer_names
from ckptdoctor.model import Role


def _optimizer_rows(path: Path) -> list:
    """The report's optimizer variables in stored index order (`optimizer/vars/<i>`)."""
    rows = [v for v in inspect(path).variables if v.name.startswith("optimizer/vars/")]
    return sorted(rows, key=lambda v: int(v.name.rpartition("/")[2]))


def _slot(row) -> tuple[str, str]:
    """(owner path, slot kind) of a slot the report places beside its variable."""
    owner, _, kind = row.path.rpartition("/")
    return owner, kind


def test_real_tf_keras_file_names_slots_as_tf_keras_loads_them(tf):
    """The reported bug: `optimizer/learning_rate` listed with shape [3, 3, 3, 32]. tf.keras 2.15 stores no
    learning rate: index 1 is the first Adam slot, m of conv2d/kernel."""
    tf_keras = pytest.importorskip("tf_keras", reason="tf_keras not installed")
    path = realworld("medmnist_keras_v3_zip/model.keras")
    optimizer = tf_keras.models.load_model(path).optimizer
    expected = [(v.name.removesuffix(":0"), tuple(v.shape)) for v in optimizer.variables]
    rows = _optimizer_rows(path)
    assert len(rows) == len(expected)
    assert rows[0].path == "optimizer/iterations" and expected[0][0] == "iteration"
    for row, (keras_name, shape) in zip(rows[1:], expected[1:], strict=True):
        owner, kind = _slot(row)
        assert keras_name == f"{kind}/{owner}" and row.shape == shape
        assert row.role is Role.OPTIMIZER_SLOT and row.layer == owner.rpartition("/")[0]
    assert not [v for v in inspect(path).variables if v.path.endswith("learning_rate")]


def _keras3_model(keras, optimizer, tmp_path: Path, name: str) -> tuple[Path, object]:
    import numpy as np

    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, name="d"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(2, name="out"),
        ],
        name="m",
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.ones((4, 4)), np.ones((4, 2)), verbose=0)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    return path, model


@pytest.mark.parametrize("name", ["adam", "amsgrad", "schedule", "rmsprop_centered", "nadam", "sgd"])
def test_keras3_slots_sit_beside_their_variable(tf, tmp_path, name):
    keras = pytest.importorskip("keras")
    optimizers = keras.optimizers
    optimizer = {
        "adam": lambda: optimizers.Adam(),
        "amsgrad": lambda: optimizers.Adam(amsgrad=True),
        "schedule": lambda: optimizers.Adam(optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)),
        "rmsprop_centered": lambda: optimizers.RMSprop(momentum=0.9, centered=True),
        "nadam": lambda: optimizers.Nadam(),
        "sgd": lambda: optimizers.SGD(),
    }[name]()
    path, model = _keras3_model(keras, optimizer, tmp_path, name)
    keras_paths = [v.path for v in model.optimizer.variables]
    rows = _optimizer_rows(path)
    assert len(rows) == len(keras_paths)
    for row, keras_path in zip(rows, keras_paths, strict=True):
        leaf = keras_path.rpartition("/")[2]
        if row.layer != "optimizer":
            owner, kind = _slot(row)
            assert leaf == f"m_{owner.replace('/', '_')}_{kind}", (row.path, keras_path)
        else:  # the optimizer's own state: iteration, learning_rate, Nadam's u_product (Keras: `variable`)
            assert row.path.startswith("optimizer/")
            assert {"iteration": "iterations", "variable": "u_product"}.get(leaf, leaf) == row.path.partition("/")[2]
    beside = [row for row in rows if row.layer != "optimizer"]
    assert {row.layer for row in beside} == (set() if name == "sgd" else {"d", "bn", "out"})
    assert all(row.role is Role.OPTIMIZER_SLOT for row in beside)
    assert not any("moving" in row.path for row in beside)  # BN statistics are not trainable: no slots


def _rewrite_member(path: Path, member: str, text: str) -> Path:
    out = path.with_name("edited.keras")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            target.writestr(info, text if info.filename == member else source.read(info))
    return out


def test_a_config_that_does_not_fit_the_file_keeps_positions(tf, tmp_path):
    """config.json claims amsgrad (a third run of slots) that the file does not hold: no slot is named after a
    variable it may not belong to; the counter and the scalar learning rate are still named."""
    keras = pytest.importorskip("keras")
    path, _ = _keras3_model(keras, keras.optimizers.Adam(), tmp_path, "adam")
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    config["compile_config"]["optimizer"]["config"]["amsgrad"] = True
    rows = _optimizer_rows(_rewrite_member(path, "config.json", json.dumps(config)))
    assert [row.path for row in rows[:3]] == ["optimizer/iterations", "optimizer/learning_rate", "optimizer/2"]
    assert {row.layer for row in rows} == {"optimizer"}


@pytest.mark.parametrize("keras3", [True, False, None])
def test_a_slot_whose_shape_differs_from_its_variable_keeps_its_position(keras3):
    """Count fits, shapes do not (a variable and its slot swapped): positions, never a wrong owner."""
    spec = OptimizerSpec("SGD", {"momentum": 0.9}, keras3)
    header = [StoredVar((), False), StoredVar((), True)] if keras3 is not False else [StoredVar((), False)]
    trainable = [("d/kernel", (4, 3)), ("d/bias", (3,))]
    fitting = optimizer_names([*header, StoredVar((4, 3), True), StoredVar((3,), True)], spec, trainable)
    assert [name.slot_of for name in fitting[len(header) :]] == ["d/kernel", "d/bias"]
    swapped = optimizer_names([*header, StoredVar((3,), True), StoredVar((4, 3), True)], spec, trainable)
    assert all(name.slot_of is None for name in swapped)
    assert swapped[0].path == "optimizer/iterations"
    assert swapped[-1].path == f"optimizer/{len(header) + 1}"


def test_learning_rate_is_only_ever_a_scalar():
    """Without a layout (no config), index 1 is the learning rate only when it is a float scalar."""
    tensor_first = optimizer_names([StoredVar((), False), StoredVar((3, 3), True)], None, None)
    assert [name.path for name in tensor_first] == ["optimizer/iterations", "optimizer/1"]
    scalar = optimizer_names([StoredVar((), False), StoredVar((), True)], None, None)
    assert scalar[1].path == "optimizer/learning_rate"
