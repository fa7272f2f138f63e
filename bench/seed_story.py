"""Replay the seed's story on the InceptionV3 checkpoints from bench/make_inception.py, as a user would.

    python bench/seed_story.py /tmp/ckptdoctor-inception

Runs the CLI for check, patch and verify, then restores the patched and the full save into the eval graph
in TensorFlow and compares logits. Prints one line per claim and exits 1 if any claim fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
CLI = [sys.executable, "-m", "ckptdoctor"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True)


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def logits(meta: Path, prefix: str):
    import numpy as np
    import tensorflow as tf

    tf1 = tf.compat.v1
    images = np.random.default_rng(0).normal(0.5, 1.0, size=(2, 299, 299, 3)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as session:
        tf1.train.import_meta_graph(str(meta), clear_devices=True).restore(session, prefix)
        return session.run("logits:0", {"input:0": images})


def main() -> None:
    story = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ckptdoctor-inception")
    trainable, full = story / "finetune_trainable", story / "finetune_full"
    meta = story / "eval" / "eval.meta"
    before = {d.name: digest(d) for d in (trainable, full)}
    claims: list[tuple[str, bool]] = []

    result = cli("check", str(trainable), "--format", "json")
    findings = json.loads(result.stdout)["findings"]
    layers = json.loads(result.stdout)["summary"]["batchnorm_layers"]
    claims.append(
        (
            f"trainable-only save: exit {result.returncode}, {len(findings)} bn-missing-moving-stats "
            f"of {layers} BN layers",
            result.returncode == 1 and len(findings) == layers == 96,
        )
    )
    result = cli("check", str(full))
    claims.append((f"full save: exit {result.returncode}", result.returncode == 0))
    result = cli("check", str(story / "finetune_noupdate"), "--reference", str(story / "pretrained"), "-f", "json")
    names = [f["name"] for f in json.loads(result.stdout)["findings"]]
    claims.append(
        (
            f"no-update fine-tune vs pretrained: {names.count('bn-stats-match-reference')} bn-stats-match-reference",
            names == ["bn-stats-match-reference"] * 96,
        )
    )

    out = Path(tempfile.mkdtemp(prefix="ckptdoctor-story-")) / "fixed" / "model.ckpt-3"
    result = cli("patch", str(trainable), "--from", str(full), "--out", str(out))
    claims.append((f"patch: exit {result.returncode}", result.returncode == 0))
    for name in ("finetune_full", "finetune_trainable"):
        verdict = cli("verify", str(out if name == "finetune_trainable" else full), "--meta-graph", str(meta))
        claims.append(
            (
                f"verify {'patched' if name == 'finetune_trainable' else 'full'}: exit {verdict.returncode}",
                verdict.returncode == 0,
            )
        )
    verdict = cli("verify", str(trainable), "--meta-graph", str(meta))
    claims.append((f"verify trainable-only: exit {verdict.returncode}", verdict.returncode == 1))

    patched_logits, full_logits = logits(meta, str(out)), logits(meta, str(full / "model.ckpt-3"))
    same = patched_logits.shape == full_logits.shape and (patched_logits == full_logits).all()
    claims.append((f"patched logits identical to the full save's: {bool(same)}", bool(same)))
    after = {d.name: digest(d) for d in (trainable, full)}
    claims.append(("inputs byte-identical after patch", after == before))

    for text, ok in claims:
        print(f"{'ok  ' if ok else 'FAIL'} {text}")
    sys.exit(0 if all(ok for _, ok in claims) else 1)


if __name__ == "__main__":
    main()
