"""The project's own bundle writer, as the synthetic generator drives it: TensorFlow reads every tensor back."""

from __future__ import annotations

import numpy as np
from synthetic import write_synthetic

from ckptdoctor import check, inspect
from ckptdoctor.formats.tf_bundle import BundleReader


def test_tensorflow_reads_a_multi_shard_synthetic_checkpoint(tmp_path, tf):
    prefix = tmp_path / "model.ckpt"
    count = write_synthetic(prefix, total_bytes=3_000_000, tensors=400, shards=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.ckpt.data-00000-of-00003",
        "model.ckpt.data-00001-of-00003",
        "model.ckpt.data-00002-of-00003",
        "model.ckpt.index",
    ]
    listed = dict(tf.train.list_variables(str(prefix)))
    assert len(listed) == count == 400
    reader, loaded = BundleReader(str(prefix)), tf.train.load_checkpoint(str(prefix))
    for info in reader.tensors():
        assert list(info.shape) == listed[info.name]
        np.testing.assert_array_equal(reader.read(info.name), loaded.get_tensor(info.name), strict=True)
    assert {entry.shard_id for entry in reader.entries.values()} == {0, 1, 2}


def test_synthetic_variants_are_what_they_claim(tmp_path):
    write_synthetic(tmp_path / "full", 400_000, 80)
    write_synthetic(tmp_path / "trainable", 400_000, 80, drop_statistics=True)
    assert check(tmp_path / "full").findings == ()
    assert {f.name for f in check(tmp_path / "trainable").findings} == {"bn-missing-moving-stats"}
    assert len(inspect(tmp_path / "trainable").batchnorm) == 20
