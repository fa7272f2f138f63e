"""Recalibrate the InceptionV3 story (bench/make_inception.py): no full save of the fine-tuning run, only the
trainable-only checkpoint and its training graph. Measures time and peak memory of the CLI on N samples.

    pip install -e '.[tf]' tf-slim && python bench/make_inception.py /tmp/ckptdoctor-inception
    python bench/recalibrate_story.py /tmp/ckptdoctor-inception [--samples 1024]

Writes the training graph beside finetune_trainable/model.ckpt-3 as the `.meta` tf.train.Saver leaves there
(make_inception saves without one), then runs `ckptdoctor recalibrate` in a fresh process with samples from
`recalibrate_story:batches` (generated batches of 32, the fine-tuning data's distribution), measures wall time
and peak RSS (os.wait4), checks the output and restores it into the evaluation graph with `verify`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BATCH = 32
SIZE = 299
SHIFT = 0.5  # make_inception's fine-tuning data: normal(0.5, 1)


def batches():
    """Sample batches from the fine-tuning data's distribution, generated so no 1 GB file is needed."""
    import numpy as np

    rng = np.random.default_rng(2024)
    while True:
        yield rng.normal(SHIFT, 1.0, size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)


def export_training_graph(meta: Path) -> None:
    """The fine-tuning graph (is_training=True, UPDATE_OPS in the train op), as tf.train.Saver saves its .meta."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import make_inception as story
    import tensorflow as tf

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="input")
        labels = tf1.placeholder(tf.int64, [None], name="labels")
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, story._net(images, is_training=True))
        step = tf1.train.get_or_create_global_step()
        with tf1.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
            tf1.train.MomentumOptimizer(0.01, 0.9).minimize(loss, step)
        tf1.train.export_meta_graph(str(meta), saver_def=tf1.train.Saver().as_saver_def(), clear_devices=True)


def run_measured(args: list[str]) -> tuple[int, float, float, str]:
    """Exit code, seconds, peak RSS in MiB, and stdout of one fresh CLI process."""
    paths = [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]  # recalibrate_story:batches
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen([sys.executable, "-m", "ckptdoctor", *args], stdout=out, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read().decode()
    return os.waitstatus_to_exitcode(status), seconds, usage.ru_maxrss / 1024, text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("story", nargs="?", default="/tmp/ckptdoctor-inception")
    parser.add_argument("--samples", type=int, default=1024)
    options = parser.parse_args()
    story = Path(options.story)
    prefix = story / "finetune_trainable" / "model.ckpt-3"
    meta = Path(f"{prefix}.meta")
    if not meta.exists():
        export_training_graph(meta)
    out = Path(tempfile.mkdtemp(prefix="ckptdoctor-recalibrated-")) / "model.ckpt-3"
    code, seconds, peak, text = run_measured(
        [
            "recalibrate",
            str(prefix),
            "--data",
            "recalibrate_story:batches",
            "--samples",
            str(options.samples),
            "--out",
            str(out),
        ]
    )
    print(text.splitlines()[0] if text else "(no output)")
    print(f"recalibrate: exit {code}, {seconds:.1f} s, peak RSS {peak:.0f} MiB, {options.samples} samples")
    check = subprocess.run([sys.executable, "-m", "ckptdoctor", "check", str(out)], capture_output=True, text=True)
    print(f"check of the output: exit {check.returncode}")
    verify = subprocess.run(
        [sys.executable, "-m", "ckptdoctor", "verify", str(out), "--meta-graph", str(story / "eval" / "eval.meta")],
        capture_output=True,
        text=True,
    )
    print(f"verify in the eval graph: exit {verify.returncode}")
    sys.exit(0 if code == check.returncode == verify.returncode == 0 else 1)


if __name__ == "__main__":
    main()
