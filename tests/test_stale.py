"""bn-stats-stale (BN005): statistics that moved only part of the way, measured against what TF/Keras wrote."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES, copy_checkpoint, file_bytes, run_cli

import ckptdoctor
from ckptdoctor.analysis.staleness import share_left
from ckptdoctor.model import Severity

STALE = FIXTURES / "stale"
DECAY = 0.9  # scripts/make_fixtures.py
LAYERS = ("net/fused_bn", "net/plain_bn")
INITIAL = {"moving_mean": 0.0, "moving_variance": 1.0}


def prefix(steps: int):
    return STALE / f"steps_{steps}" / f"model.ckpt-{steps}"


def stale(report) -> dict[str, object]:
    return {f.subject: f for f in report.findings if f.code == "BN005"}


def batch_mean():
    """The constant batch's per-channel mean, the c every moving_mean converges to."""
    from make_fixtures import STALE_INPUT  # scripts/ is on the path (conftest)

    return STALE_INPUT.astype(np.float64).mean(axis=(0, 1, 2))


@pytest.mark.parametrize("steps", [3, 10, 100])
def test_stored_statistics_hold_the_share_the_rule_reports(tf, steps):
    """TF's own values: v_N = c + (init - c) d^N for constant batch statistics c, and the rule reports d^N."""
    report = ckptdoctor.check(prefix(steps), stale_threshold=1e-9)
    assert report.updates is not None
    assert (report.updates.steps, report.updates.steps_source) == (steps, "global_step")
    decays = {layer.layer: layer for layer in report.updates.layers}
    assert set(decays) == set(LAYERS)
    findings = stale(report)
    for layer in LAYERS:
        assert decays[layer].source == "meta-graph"
        # moving_mean: c is the input's mean, |init - c| is about 1.4, so the share is measured precisely.
        stored = tf.train.load_variable(str(prefix(steps)), f"{layer}/moving_mean")
        measured = (stored - batch_mean()) / (0.0 - batch_mean())
        np.testing.assert_allclose(measured, DECAY**steps, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(measured, share_left(decays[layer].decay, steps), rtol=1e-4, atol=1e-6)
        # moving_variance (c differs by Bessel's correction between fused and plain): what 1,000 steps reach.
        converged = tf.train.load_variable(str(prefix(1000)), f"{layer}/moving_variance")
        stored = tf.train.load_variable(str(prefix(steps)), f"{layer}/moving_variance")
        np.testing.assert_allclose(stored, converged + (1.0 - converged) * DECAY**steps, atol=1e-5)
        assert f"{steps} steps at decay 0.9" in findings[layer].message
        assert findings[layer].severity is Severity.WARNING


def test_long_run_converges_to_the_batch_statistics(tf):
    for layer in LAYERS:
        converged = tf.train.load_variable(str(prefix(1000)), f"{layer}/moving_mean")
        np.testing.assert_allclose(converged, batch_mean(), rtol=1e-5)


@pytest.mark.parametrize(("steps", "percent"), [(3, "73%"), (10, "35%")])
def test_message_states_the_share_left(steps, percent):
    findings = stale(ckptdoctor.check(prefix(steps)))
    assert set(findings) == set(LAYERS)
    for layer, finding in findings.items():
        assert finding.message == (
            f"BatchNorm layer {layer}: {percent} of these statistics are still the values training started from: "
            f"{steps} steps at decay 0.9"
        )
        assert "ckptdoctor recalibrate" in finding.hint


@pytest.mark.parametrize("steps", [100, 1000])
def test_long_runs_get_no_finding(steps):
    assert stale(ckptdoctor.check(prefix(steps))) == {}


def test_reference_makes_steps_the_difference():
    report = ckptdoctor.check(prefix(10), reference=prefix(3))
    assert report.updates.steps == 7 and "minus the reference's 3" in report.updates.steps_source
    assert "48% of these statistics" in stale(report)["net/plain_bn"].message


def test_without_meta_graph_no_decay_and_no_finding(tmp_path):
    copied = copy_checkpoint(prefix(3), tmp_path / "run")
    (copied.parent / f"{copied.name}.meta").unlink()
    report = ckptdoctor.check(copied)
    assert stale(report) == {}
    assert report.updates.layers == () and report.updates.steps == 3  # inspect can still tell the steps


def test_step_in_the_prefix_when_no_counter(tf, tmp_path):
    """A TF1 save without global_step: the `-NNN` tf.train.Saver appends is the step."""
    tf1 = tf.compat.v1
    out = tmp_path / "model.ckpt-4"
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as session:
        tf1.get_variable("bn/BatchNorm/moving_mean", [2], initializer=tf1.zeros_initializer())
        session.run(tf1.global_variables_initializer())
        tf1.train.Saver().save(session, str(out), write_meta_graph=False)
    report = ckptdoctor.check(out, decay=0.9)
    assert (report.updates.steps, report.updates.steps_source) == (4, "the prefix")
    assert "66% of these statistics" in stale(report)["bn/BatchNorm"].message


def test_cli_check_options_and_policy(tmp_path):
    before = file_bytes(prefix(3))
    result = run_cli("check", str(prefix(3)), "--fail-on", "warning", "--verbose")
    assert result.returncode == 1 and "73% of these statistics" in result.stdout
    assert run_cli("check", str(prefix(3)), "--fail-on", "warning", "--steps", "1000").returncode == 0
    assert run_cli("check", str(prefix(3)), "--fail-on", "warning", "--decay", "0.5").returncode == 0  # 12.5%
    result = run_cli("check", str(prefix(100)), "--fail-on", "warning", "--decay", "0.99", "-v")  # 0.99^100 = 37%
    assert result.returncode == 1 and "37% of these statistics" in result.stdout and "at decay 0.99" in result.stdout
    (tmp_path / "pyproject.toml").write_text('[tool.ckptdoctor]\nstale-threshold = 0.5\nfail-on = "warning"\n')
    assert run_cli("check", str(prefix(10)), cwd=tmp_path).returncode == 0  # 35% < 0.5
    assert run_cli("check", str(prefix(3)), cwd=tmp_path).returncode == 1  # 73% >= 0.5
    assert file_bytes(prefix(3)) == before


@pytest.mark.parametrize(
    ("args", "config", "says"),
    [
        (["--decay", "1.5"], None, "--decay"),
        (["--steps", "-1"], None, "--steps"),
        ([], "stale-threshold = 'high'\n", "stale-threshold"),
        ([], "stale-threshold = 0\n", "stale-threshold"),
    ],
)
def test_cli_bad_values_exit_2(tmp_path, args, config, says):
    if config is not None:
        (tmp_path / "pyproject.toml").write_text("[tool.ckptdoctor]\n" + config)
    result = run_cli("check", str(prefix(3)), *args, cwd=tmp_path)
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr


def test_hostile_meta_beside_checkpoint_is_a_note_not_a_crash(tmp_path):
    copied = copy_checkpoint(prefix(3), tmp_path / "run")
    (copied.parent / f"{copied.name}.meta").write_bytes(b"\x08garbage" * 1000)
    report = ckptdoctor.check(copied)
    assert stale(report) == {} and "cannot be parsed" in report.updates.note
    result = run_cli("check", str(copied))
    assert result.returncode == 0 and result.stderr == ""


def _keras_model(keras, frozen: bool):
    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization(momentum=0.99, name="bn")(inputs)
    frozen_bn = keras.layers.BatchNormalization(momentum=0.99, name="bn_frozen")
    frozen_bn.trainable = not frozen
    outputs = keras.layers.Dense(1, name="head")(frozen_bn(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def test_keras_momentum_and_iterations(tf, tmp_path):
    """Keras 3 .keras and full-model .h5: momentum from the config, steps from the optimizer's iterations."""
    import keras

    model = _keras_model(keras, frozen=True)
    batch = np.tile(np.arange(4, dtype=np.float32) + 1.0, (8, 1))  # constant batch statistics c = 1..4
    model.fit(batch, np.zeros((8, 1)), batch_size=8, epochs=3, verbose=0)
    moving_mean = model.get_layer("bn").moving_mean.numpy()
    measured = 1 - moving_mean / (np.arange(4) + 1.0)  # c + (0 - c) d^N, so d^N = 1 - v/c
    np.testing.assert_allclose(measured, 0.99**3, rtol=1e-5)
    for name in ("model.keras", "model.h5"):
        model.save(tmp_path / name)
        report = ckptdoctor.check(tmp_path / name)
        assert report.updates.steps == 3 and "iteration" in report.updates.steps_source
        findings = stale(report)
        assert findings["bn"].severity is Severity.WARNING
        assert findings["bn"].message.endswith(
            "97% of these statistics are still the values training started from: 3 steps at decay 0.99"
        )
        assert findings["bn_frozen"].severity is Severity.INFO and "frozen" in findings["bn_frozen"].message


def test_inspect_tells_the_decay_and_the_prefix_step_without_reading_values():
    updates = ckptdoctor.inspect(prefix(3)).updates
    assert (updates.steps, updates.steps_source) == (3, "the prefix")
    assert {layer.layer: round(layer.decay, 6) for layer in updates.layers} == dict.fromkeys(LAYERS, 0.9)


def test_check_gives_a_stale_layer_its_short_cause_not_the_rules_explanation():
    """The explanation (with its issue numbers and how decays are found) is `explain`'s; check's finding says in
    a sentence why, for the checkpoint's framework (fresh-eyes pass: BN005 printed the whole paragraph)."""
    result = run_cli("check", FIXTURES / "stale" / "steps_3")
    assert result.returncode == 0, result.stderr  # a warning: fails only with --fail-on warning
    assert "slim's default 0.9997 takes ~10,000 steps" in " ".join(result.stdout.split())
    assert "tensorflow/models#4367" not in result.stdout
