"""Large synthetic TF1 checkpoints with slim-style BatchNorm scopes, written by ckptdoctor's own bundle writer.

    python scripts/synthetic.py /tmp/big/model.ckpt --gigabytes 2 --tensors 20000 --shards 8
    python scripts/synthetic.py /tmp/huge/model.ckpt --gigabytes 10 --tensors 20000 --shards 8   # the 10 GB case

Layout: `Synthetic/Block_<b>/Conv2d_<c>/weights` (float32, sized so that the total is as asked) and, per
conv, `.../BatchNorm/{beta,moving_mean,moving_variance}` with positive variances; `--drop-statistics`
leaves the moving statistics out (the trainable-only save), `--statistics-only` writes only them (a donor).
Values are random but cheap: one random block reused at shifting offsets. tests/test_synthetic.py proves
at small size that TensorFlow reads what this writes. It lives in scripts/ with the other generators, so that
both bench/ (at scale) and tests/ (small) import it without tests importing the benchmarks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ckptdoctor import dtypes
from ckptdoctor.formats.crc import crc32c, mask
from ckptdoctor.writer.bundle import BundleWriter

FLOAT32 = dtypes.BY_NAME["float32"].code
CHANNELS = 64
PER_CONV = 4  # weights + beta + moving_mean + moving_variance


def write_synthetic(
    prefix: str | Path,
    total_bytes: int,
    tensors: int,
    shards: int = 1,
    drop_statistics: bool = False,
    statistics_only: bool = False,
    seed: int = 0,
) -> int:
    """Write the checkpoint; returns the number of tensors written."""
    rng = np.random.default_rng(seed)
    convs = max(1, tensors // PER_CONV)
    weight_elements = max(CHANNELS, (total_bytes // convs) // 4 // CHANNELS * CHANNELS)
    pool = rng.normal(0, 0.05, size=weight_elements + 4096).astype("<f4")
    writer = BundleWriter(str(prefix), num_shards=shards)
    written = 0

    def add(name: str, values: np.ndarray) -> None:
        nonlocal written
        raw = values.astype("<f4").tobytes()
        writer.add(name.encode(), FLOAT32, tuple(values.shape), raw, mask(crc32c(raw)))
        written += 1

    try:
        for conv in range(convs):
            scope = f"Synthetic/Block_{conv // 16}/Conv2d_{conv % 16}"
            if not statistics_only:
                start = (conv * 97) % 4096
                add(f"{scope}/weights", pool[start : start + weight_elements].reshape(-1, CHANNELS))
                add(f"{scope}/BatchNorm/beta", rng.normal(0, 0.1, CHANNELS))
            if not drop_statistics:
                add(f"{scope}/BatchNorm/moving_mean", rng.normal(0, 1, CHANNELS))
                add(f"{scope}/BatchNorm/moving_variance", rng.uniform(0.5, 2.0, CHANNELS))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefix", type=Path)
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--tensors", type=int, default=20000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--drop-statistics", action="store_true")
    parser.add_argument("--statistics-only", action="store_true")
    args = parser.parse_args()
    args.prefix.parent.mkdir(parents=True, exist_ok=True)
    count = write_synthetic(
        args.prefix, int(args.gigabytes * 1e9), args.tensors, args.shards, args.drop_statistics, args.statistics_only
    )
    size = sum(p.stat().st_size for p in args.prefix.parent.glob(args.prefix.name + ".*"))
    print(f"wrote {args.prefix}: {count} tensors, {args.shards} shards, {size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
