"""Write a TF1 checkpoint with many small tensors through TensorFlow's own SaveV2, outside the repo.

    python bench/make_many.py /tmp/ckptdoctor-many [--layers 25000]

Each of the LAYERS BatchNorm layers `net/block_i/BatchNorm` holds gamma, beta, moving_mean and
moving_variance (float32, shape [16]): 100,000 tensors by default. Tensors are saved in chunks with
`tf.raw_ops.SaveV2` into temporary prefixes and merged with `tf.raw_ops.MergeV2Checkpoints`, as TF's own
sharded saver does, so the index is exactly what TensorFlow writes.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

CHUNK = 5000
VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")


def write_many(prefix: Path, layers: int, width: int = 16) -> None:
    names = [f"net/block_{i}/BatchNorm/{v}" for i in range(layers) for v in VARIABLES]
    values = np.random.default_rng(0).random((len(names), width), dtype=np.float32) + np.float32(0.5)
    parts = prefix.parent / "parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    chunk_prefixes = []
    for start in range(0, len(names), CHUNK):
        chunk = f"{parts}/part-{start // CHUNK:05d}"
        tf.raw_ops.SaveV2(
            prefix=chunk,
            tensor_names=names[start : start + CHUNK],
            shape_and_slices=[""] * len(names[start : start + CHUNK]),
            tensors=[tf.constant(v) for v in values[start : start + CHUNK]],
        )
        chunk_prefixes.append(chunk)
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=chunk_prefixes, destination_prefix=str(prefix))
    shutil.rmtree(parts, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--layers", type=int, default=25000)
    args = parser.parse_args()
    prefix = args.directory / "model.ckpt"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_many(prefix, args.layers)
    print(f"wrote {prefix}: {args.layers * len(VARIABLES)} tensors")


if __name__ == "__main__":
    main()
