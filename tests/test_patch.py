"""patch: the repaired checkpoint restores in TensorFlow's eval graph and computes the full save's logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_BUNDLES, TF1, copy_checkpoint, file_bytes

from ckptdoctor import check
from ckptdoctor.formats.tf_bundle import BundleReader
from ckptdoctor.patch import PatchError, patch
from ckptdoctor.writer.guard import OutputError

TRAINABLE = FIXTURE_BUNDLES["finetune_trainable"]
FULL = FIXTURE_BUNDLES["finetune_full"]
EVAL_META = TF1 / "eval" / "eval.meta"


def eval_logits(tf, prefix: Path) -> np.ndarray:
    """Restore `prefix` into the eval graph (is_training=False) and run it on a fixed batch."""
    tf1 = tf.compat.v1
    images = np.random.default_rng(0).normal(0.5, 1.5, size=(5, 8, 8, 3)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as session:
        saver = tf1.train.import_meta_graph(str(EVAL_META), clear_devices=True)
        saver.restore(session, str(prefix))
        return session.run("logits:0", {"input:0": images})


def test_patched_checkpoint_restores_and_gives_the_full_saves_logits(tmp_path, tf):
    inputs_before = {**file_bytes(TRAINABLE), **file_bytes(FULL)}
    out = tmp_path / "fixed" / "model.ckpt-20"  # the directory is created
    result = patch(TRAINABLE, FULL, out)

    assert len(result.added) == 8  # moving_mean and moving_variance of 4 layers
    assert {a.statistic for a in result.added} == {"moving_mean", "moving_variance"}
    with pytest.raises(tf.errors.NotFoundError, match="moving_mean not found"):
        eval_logits(tf, TRAINABLE)
    np.testing.assert_array_equal(eval_logits(tf, out), eval_logits(tf, FULL), strict=True)
    assert check(out).findings == ()
    assert {**file_bytes(TRAINABLE), **file_bytes(FULL)} == inputs_before


def test_patch_adds_no_optimizer_slots_and_keeps_every_target_tensor(tmp_path, tf):
    out = tmp_path / "fixed"
    patch(TRAINABLE, FULL, out)
    listed = {name for name, _ in tf.train.list_variables(str(out))}
    target = {name for name, _ in tf.train.list_variables(str(TRAINABLE))}
    assert target < listed
    assert {n.rsplit("/", 1)[-1] for n in listed - target} == {"moving_mean", "moving_variance"}
    reader = tf.train.load_checkpoint(str(out))
    donor = tf.train.load_checkpoint(str(FULL))
    for name in listed - target:
        np.testing.assert_array_equal(reader.get_tensor(name), donor.get_tensor(name))


def test_state_file_names_the_output(tmp_path):
    out = tmp_path / "model.ckpt-fixed"
    patch(TRAINABLE, FULL, out)
    assert 'model_checkpoint_path: "model.ckpt-fixed"' in (tmp_path / "checkpoint").read_text()
    assert not list(tmp_path.glob("*.tmp-*"))


def test_patching_nothing_rewrites_tf_bytes_exactly(tmp_path):
    # TF1 Saver writes data in sorted key order, so a copy through our writer must be byte-identical.
    out = tmp_path / "copy"
    result = patch(FULL, FULL.parent, out)
    assert result.added == ()
    assert Path(f"{out}.index").read_bytes() == Path(f"{FULL}.index").read_bytes()
    data = "data-00000-of-00001"
    assert Path(f"{out}.{data}").read_bytes() == Path(f"{FULL}.{data}").read_bytes()


def test_multi_shard_target_becomes_one_shard(tmp_path, tf):
    out = tmp_path / "merged"
    patch(FIXTURE_BUNDLES["sharded"], FIXTURE_BUNDLES["sharded"], out)
    assert BundleReader(str(out)).num_shards == 1
    original = tf.train.load_checkpoint(str(FIXTURE_BUNDLES["sharded"]))
    merged = tf.train.load_checkpoint(str(out))
    for name, _ in tf.train.list_variables(str(FIXTURE_BUNDLES["sharded"])):
        np.testing.assert_array_equal(merged.get_tensor(name), original.get_tensor(name))


def test_existing_output_is_refused_without_force(tmp_path):
    out = tmp_path / "fixed"
    patch(TRAINABLE, FULL, out)
    before = file_bytes(out)
    with pytest.raises(PatchError, match="use --force"):
        patch(TRAINABLE, FULL, out)
    assert file_bytes(out) == before
    patch(TRAINABLE, FULL, out, force=True)
    assert check(out).findings == ()


def test_output_may_not_be_an_input(tmp_path):
    target = copy_checkpoint(TRAINABLE, tmp_path)
    before = file_bytes(target)
    with pytest.raises(OutputError, match="must not be one of the inputs"):
        patch(target, FULL, target, force=True)
    assert file_bytes(target) == before


def test_donor_without_the_statistics_names_the_missing_keys(tmp_path):
    with pytest.raises(PatchError, match=r"donor lacks 8 needed tensors: net/batch_normalization/moving_mean"):
        patch(TRAINABLE, TRAINABLE, tmp_path / "out")
    assert not list(tmp_path.iterdir())


def test_donor_with_wrong_shapes_is_refused(tmp_path, tf):
    donor = str(tmp_path / "donor" / "model.ckpt")
    names = [
        f"net/{layer}/{stat}"
        for layer in ("conv1/BatchNorm", "conv2/BatchNorm", "batch_normalization", "batch_normalization_1")
        for stat in ("moving_mean", "moving_variance")
    ]
    tensors = [tf.zeros([5]) for _ in names]
    tf.raw_ops.SaveV2(prefix=donor, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    with pytest.raises(PatchError, match=r"is float32\[5\] in the donor but the layer's beta is float32\[8\]"):
        patch(TRAINABLE, donor, tmp_path / "out")
    assert not (tmp_path / "out.index").exists()
