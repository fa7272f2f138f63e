"""verify agrees with TensorFlow: what it calls missing is exactly what the restore fails on."""

from __future__ import annotations

from conftest import FIXTURE_BUNDLES, TF1

from ckptdoctor.patch import patch
from ckptdoctor.verify import verify_meta_graph

META = TF1 / "eval" / "eval.meta"
STATS = {f"net/{layer}/{stat}" for layer in ("conv1/BatchNorm", "conv2/BatchNorm", "batch_normalization",
         "batch_normalization_1") for stat in ("moving_mean", "moving_variance")}  # fmt: skip


def test_full_save_restores(tf):
    result = verify_meta_graph(FIXTURE_BUNDLES["finetune_full"], META)
    assert result.ok and result.restored
    assert result.graph_variables == 21  # model variables only: 13 weights and 8 statistics
    assert result.missing == () and result.mismatched == ()


def test_trainable_save_misses_exactly_the_statistics(tf):
    result = verify_meta_graph(FIXTURE_BUNDLES["finetune_trainable"], META)
    assert not result.ok and not result.restored
    assert set(result.missing) == STATS
    assert "NotFoundError" in result.tf_error


def test_patched_save_restores(tmp_path, tf):
    out = tmp_path / "fixed"
    patch(FIXTURE_BUNDLES["finetune_trainable"], FIXTURE_BUNDLES["finetune_full"], out)
    assert verify_meta_graph(out, META).ok


def test_shape_mismatch_is_reported(tmp_path, tf):
    prefix = str(tmp_path / "wrong")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["net/conv1/weights"], shape_and_slices=[""],
                      tensors=[tf.zeros([2, 2])])  # fmt: skip
    result = verify_meta_graph(prefix, META)
    assert not result.ok
    (mismatch,) = result.mismatched
    assert (mismatch.key, mismatch.expected, mismatch.found) == ("net/conv1/weights", "float32[3, 3, 3, 8]",
                                                                 "float32[2, 2]")  # fmt: skip
    assert len(result.missing) == 20
