"""verify on a TF2 checkpoint written from the model alone, into a model that has an optimizer: every model
variable restores, so it passes, with a note naming the optimizer state left unrestored; a model variable
that does not restore still fails, named exactly. Keras warnings come once each, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import KERAS, ROOT, run_cli

HEALTHY_MODEL = KERAS / "healthy" / "model.keras"
BUILDERS = f"""
import keras

def trained():
    return keras.saving.load_model({str(HEALTHY_MODEL)!r})  # compiled, its Adam built with slots

def unbuilt():
    model = keras.models.clone_model(keras.saving.load_model({str(HEALTHY_MODEL)!r}, compile=False))
    model.compile(optimizer="adam", loss="mse")  # an optimizer that has not run: iteration, learning_rate
    return model
"""


@pytest.fixture
def model_only_checkpoint(tf, tmp_path) -> Path:
    """tf.train.Checkpoint(model=...) of a model that was never compiled: no optimizer state at all."""
    import keras

    model = keras.models.clone_model(keras.saving.load_model(HEALTHY_MODEL, compile=False))
    tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt" / "model"))
    (tmp_path / "builders.py").write_text(BUILDERS)
    return tmp_path / "ckpt"


def _verify(written: Path, builder: str, checkpoint: Path | None = None):
    """verify CHECKPOINT (by default the one written) with a builder from builders.py beside it."""
    env = {"PYTHONPATH": f"{written.parent}:{ROOT}"}
    return run_cli("verify", checkpoint or written, "--model", f"builders:{builder}", env=env)


@pytest.mark.parametrize(
    ("builder", "named"),
    [
        ("unbuilt", ["adam/iteration", "adam/learning_rate"]),
        ("trained", ["adam/iteration", "adam/conv_0_kernel_momentum", "more"]),
    ],
)
def test_unrestored_optimizer_state_passes_with_a_note(model_only_checkpoint, builder, named):
    result = _verify(model_only_checkpoint, builder)
    assert result.returncode == 0, result.stdout + result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: not restored: ")]
    assert len(notes) == 1 and all(name in notes[0] for name in named), result.stdout
    assert "holds no value" in notes[0] and "every variable of the model itself was restored" in notes[0]
    assert "missing" not in result.stdout and "restored for real" in result.stdout


def test_an_unrestored_model_variable_still_fails_and_is_named(model_only_checkpoint):
    """The statistics are missing from this checkpoint: the failure names exactly them (TF's message shows
    10 of 32 unbound objects, optimizer slots among them), and no note excuses them."""
    result = _verify(model_only_checkpoint, "trained", checkpoint=KERAS / "stats_removed" / "ckpt")
    assert result.returncode == 1, result.stdout + result.stderr
    missing = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("  missing ")}
    layers = ("bn_default", "bn_noscale", "bn_nocenter")
    expected = {f"{layer}/{stat}" for layer in layers for stat in ("moving_mean", "moving_variance")}
    assert missing == expected
    assert "note:" not in result.stdout


def test_keras_user_warnings_once_each_in_one_line(tf):
    """Keras warns once per skipped container (three here), each as two lines of file, line and source."""
    result = run_cli("verify", KERAS / "stats_removed" / "model.weights.h5", "--model", HEALTHY_MODEL)
    assert result.returncode == 1
    warned = [line for line in result.stderr.splitlines() if "Skipping nested container" in line]
    assert len(warned) == 1, result.stderr
    assert warned[0].startswith("ckptdoctor: warning: UserWarning: ") and warned[0].endswith("(3×)")
    assert "saving_lib.py" not in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith(" ")]
