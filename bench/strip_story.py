"""Strip the InceptionV3 story (bench/make_inception.py) for deployment, with and without --use-ema, and prove
the outputs restore into the evaluation graph with the outputs a user expects.

    pip install -e '.[tf]' tf-slim && python bench/make_inception.py /tmp/ckptdoctor-inception
    python bench/strip_story.py /tmp/ckptdoctor-inception

Adds `finetune_ema/model.ckpt-3` to the story where it is missing: the fine-tuning run (three Momentum steps
from `pretrained`, update ops run) with TF-slim's `--moving_average_decay` (train_image_classifier.py): an
`ExponentialMovingAverage(0.9999, global_step)` over `slim.get_model_variables()`, full `tf.train.Saver()`.
Then, each as a fresh CLI process (time and peak RSS from os.wait4):
  strip finetune_full               -> restored by the eval graph's own Saver: logits identical to the full save's
  strip finetune_ema --use-ema      -> restored by the eval graph's own Saver: logits identical to the EMA
                                       checkpoint restored as eval_image_classifier.py does
                                       (`ema.variables_to_restore()`)
  strip finetune_ema                -> the trained values: logits identical to the EMA checkpoint restored plainly
Prints one line per claim (with the sizes before and after) and exits 1 if any claim fails.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from recalibrate_story import run_measured

EMA_DECAY = 0.9999  # slim's documented --moving_average_decay for Inception
STEPS = 3
SHIFT = 0.5  # make_inception's fine-tuning data: normal(0.5, 1)


def train_with_ema(pretrained: Path, prefix: Path) -> None:
    """make_inception's fine-tuning run, with slim's moving averages of the model variables."""
    import make_inception as story
    import tensorflow as tf

    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(1)
        images = tf1.placeholder(tf.float32, [story.BATCH, story.SIZE, story.SIZE, 3])
        labels = tf1.placeholder(tf.int64, [story.BATCH])
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, story._net(images, is_training=True))
        global_step = tf1.train.get_or_create_global_step()
        model_variables = story.slim.get_model_variables()
        averages = tf1.train.ExponentialMovingAverage(EMA_DECAY, global_step)
        with tf1.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
            train_op = tf1.train.MomentumOptimizer(0.01, 0.9).minimize(loss, global_step)
        with tf1.control_dependencies([train_op]):
            train_op = averages.apply(model_variables)
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            tf1.train.Saver(var_list=model_variables).restore(session, str(pretrained))
            for step in range(STEPS):
                x, y = story._batch(step, SHIFT)
                session.run(train_op, {images: x, labels: y})
            prefix.parent.mkdir(parents=True, exist_ok=True)
            tf1.train.Saver(save_relative_paths=True).save(session, str(prefix), write_meta_graph=False)


def eval_logits(meta: Path, prefix: Path, through_ema: bool = False):
    """The eval graph's logits with `prefix` restored by its own Saver, or as eval_image_classifier.py restores
    an EMA checkpoint: each model variable from its shadow."""
    import numpy as np
    import tensorflow as tf

    tf1 = tf.compat.v1
    images = np.random.default_rng(0).normal(SHIFT, 1.0, size=(2, 299, 299, 3)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as session:
        saver = tf1.train.import_meta_graph(str(meta), clear_devices=True)
        if through_ema:
            averages = tf1.train.ExponentialMovingAverage(EMA_DECAY)
            saver = tf1.train.Saver(averages.variables_to_restore(tf1.global_variables()))
        saver.restore(session, str(prefix))
        return session.run("logits:0", {"input:0": images})


def digest(directory: Path) -> dict[str, str]:
    """Streamed: this process's peak RSS is what each CLI child starts from (kept across exec)."""
    digests = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        with path.open("rb") as file:
            digests[path.name] = hashlib.file_digest(file, "sha256").hexdigest()
    return digests


def size(prefix: Path) -> int:
    return sum(p.stat().st_size for p in prefix.parent.glob(f"{prefix.name}.*") if not p.name.endswith(".meta"))


def main() -> None:
    if sys.argv[1:2] == ["--train-ema"]:
        story = Path(sys.argv[2])
        train_with_ema(story / "pretrained" / "model.ckpt", story / "finetune_ema" / "model.ckpt-3")
        return
    story = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ckptdoctor-inception")
    meta = story / "eval" / "eval.meta"
    full, ema = story / "finetune_full" / "model.ckpt-3", story / "finetune_ema" / "model.ckpt-3"
    if not Path(f"{ema}.index").exists():  # in its own process: a child forked from TensorFlow's RSS reports it
        subprocess.run([sys.executable, __file__, "--train-ema", str(story)], check=True)
    before = {d: digest(d) for d in (full.parent, ema.parent)}
    out = Path(tempfile.mkdtemp(prefix="ckptdoctor-stripped-"))
    claims: list[tuple[str, bool]] = []
    import numpy as np

    def stripped(source: Path, name: str, *options: str) -> Path:
        target = out / name / source.name
        code, seconds, peak, text = run_measured(["strip", str(source), "--out", str(target), *options])
        summary = next((line for line in text.splitlines() if line.startswith("dropped")), "").rstrip(":")
        from_ema = next((line for line in text.splitlines() if "shadows" in line), "")
        recheck = "no findings" if "no findings" in text else "findings"
        sizes = f"{size(source) / 1e6:.1f} MB -> {size(target) / 1e6:.1f} MB"
        claims.append(
            (
                f"strip {source.parent.name} {' '.join(options)}: exit {code} ({recheck}), {seconds:.1f} s,"
                f" peak RSS {peak:.0f} MiB; {sizes}; {summary}{'; ' + from_ema if from_ema else ''}",
                code == 0 and recheck == "no findings",
            )
        )
        return target

    # Every CLI run before TensorFlow is imported here, for the same reason.
    check = subprocess.run([sys.executable, "-m", "ckptdoctor", "check", str(ema)], capture_output=True, text=True)
    claims.append((f"check of the EMA checkpoint: exit {check.returncode}", check.returncode == 0))
    plain, averaged, trained = stripped(full, "full"), stripped(ema, "ema", "--use-ema"), stripped(ema, "ema_raw")

    same = np.array_equal(eval_logits(meta, plain), eval_logits(meta, full))
    claims.append((f"stripped full save: eval logits identical to the full save's: {same}", same))
    expected, raw = eval_logits(meta, ema, through_ema=True), eval_logits(meta, ema)
    same = np.array_equal(eval_logits(meta, averaged), expected)
    claims.append(
        (f"--use-ema output, eval graph's own Saver: logits identical to variables_to_restore()'s: {same}", same)
    )
    differs = not np.array_equal(expected, raw)
    claims.append((f"the averages change the logits (max |diff| {np.abs(expected - raw).max():.3g})", differs))
    same = np.array_equal(eval_logits(meta, trained), raw)
    claims.append((f"without --use-ema: logits identical to the trained values': {same}", same))

    after = {d: digest(d) for d in (full.parent, ema.parent)}
    claims.append(("inputs byte-identical after strip", after == before))
    for text, ok in claims:
        print(f"{'ok  ' if ok else 'FAIL'} {text}")
    sys.exit(0 if all(ok for _, ok in claims) else 1)


if __name__ == "__main__":
    main()
