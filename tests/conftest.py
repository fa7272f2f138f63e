"""Shared paths and fixtures: bundled TF1 fixtures, the real-world folder, TensorFlow when installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from ckptdoctor import dtypes
from ckptdoctor.formats import protos
from ckptdoctor.formats.sstable import TableBuilder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))  # generators tests share with bench/: synthetic.py, make_*_fixtures.py
FIXTURES = ROOT / "fixtures"
TF1 = FIXTURES / "tf1"
REALWORLD = ROOT.parent / "shared" / "realworld"

# Every TF V2 bundle among the real-world cases, as (id, path a user would pass).
REALWORLD_BUNDLES = {
    "serving_sm_half_plus_two_tf2": "serving_sm_half_plus_two_tf2",
    "serving_sm_half_plus_two_mkl": "serving_sm_half_plus_two_mkl",
    "serving_sm_tf_text_regression": "serving_sm_tf_text_regression/variables/variables",
    "tfx_estimator_name_based": "tfx_estimator_name_based",
    "stochdepth_tf1_resnet_bn": "stochdepth_tf1_resnet_bn",
    "golf_tf2_ckpt_manager": "golf_tf2_ckpt_manager",
}

FIXTURE_BUNDLES = {
    "pretrained": TF1 / "pretrained" / "model.ckpt",
    "finetune_full": TF1 / "finetune_full" / "model.ckpt-20",
    "finetune_trainable": TF1 / "finetune_trainable" / "model.ckpt-20",
    "finetune_noupdate": TF1 / "finetune_noupdate" / "model.ckpt-20",
    "scratch_noupdate": TF1 / "scratch_noupdate" / "model.ckpt-20",
    "damaged_values": TF1 / "damaged_values" / "model.ckpt-20",
    "partitioned": TF1 / "partitioned" / "model.ckpt",
    "sharded": TF1 / "sharded" / "model.ckpt",
}


KERAS = FIXTURES / "keras"
KERAS_FILES = {
    f"{state}/{name}": KERAS / state / name
    for state, names in {
        "healthy": ["model.keras", "model.weights.h5", "model.h5"],
        "stats_removed": ["model.keras", "model.weights.h5", "model.h5"],
        "stats_init": ["model.weights.h5"],
        "stats_nan": ["model.weights.h5"],
    }.items()
    for name in names
} | {
    "keras2/model.h5": FIXTURES / "keras2" / "model.h5",
    "keras2/model_weights.h5": FIXTURES / "keras2" / "model_weights.h5",
}
KERAS_BUNDLES = {
    "keras/healthy/ckpt": KERAS / "healthy" / "ckpt" / "model",
    "keras/healthy/savedmodel": KERAS / "healthy" / "savedmodel",
    "keras/stats_removed/ckpt": KERAS / "stats_removed" / "ckpt" / "model",
    "keras/stats_init/ckpt": KERAS / "stats_init" / "ckpt" / "model",
    "keras/stats_nan/ckpt": KERAS / "stats_nan" / "ckpt" / "model",
    "keras2/ckpt": FIXTURES / "keras2" / "ckpt" / "model",
}


def realworld(name: str) -> Path:
    if not REALWORLD.is_dir():
        pytest.skip(f"real-world checkpoints not available ({REALWORLD} is absent)")
    return REALWORLD / name


@pytest.fixture(scope="session")
def tf():
    """TensorFlow, or a skip where the [tf] extra is not installed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("tensorflow", reason="TensorFlow not installed (pip install -e '.[tf]')")


CLI_TIMEOUT = 120  # seconds a CLI call in a test may take before it counts as hung


def cli_command(*args: object) -> list[str]:
    """`python -m ckptdoctor ARGS` with this interpreter; paths may be given as Path objects."""
    return [sys.executable, "-m", "ckptdoctor", *map(str, args)]


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a test runs the CLI in: this tree's package first on the path, TensorFlow quiet, no
    debug tracebacks. `env` adds to it; a PYTHONPATH given there goes first (e.g. a directory that blocks
    `import tensorflow`)."""
    merged = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CKPTDOCTOR_DEBUG": "", **(env or {})}
    if "PYTHONUNBUFFERED" not in (env or {}):  # stdout buffered, as users have it (a sandbox may set it)
        merged.pop("PYTHONUNBUFFERED", None)
    path = [(env or {}).get("PYTHONPATH", ""), str(ROOT), os.environ.get("PYTHONPATH", "")]
    merged["PYTHONPATH"] = os.pathsep.join(part for part in path if part)
    return merged


def read_pty(leader: int) -> bytes:
    """Everything a pseudo-terminal's leader end holds once the child has exited, then close it (Linux signals
    the end with EIO rather than an empty read)."""
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    return shown


def run_cli(
    *args: object, env: dict[str, str] | None = None, cwd: Path | str | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user does, in a child process; stdout and stderr are decoded as strict UTF-8, so a
    report that is not valid UTF-8 fails the test that reads it."""
    return subprocess.run(
        cli_command(*args),
        capture_output=True,
        encoding="utf-8",
        timeout=CLI_TIMEOUT,
        env=cli_env(env),
        cwd=cwd,
        input=input,
    )


FLOAT32 = dtypes.BY_NAME["float32"].code


def bundle_header(num_shards: int = 1) -> tuple[bytes, bytes]:
    """The header record of a bundle index (empty key)."""
    return b"", protos.BundleHeaderProto(num_shards=num_shards).SerializeToString()


def entry_proto(
    shape: Sequence[int],
    size: int = 0,
    offset: int = 0,
    crc: int = 0,
    slices: Sequence[Sequence[tuple[int, int]]] = (),
    dtype: int = FLOAT32,
) -> bytes:
    """A BundleEntryProto as stored in an index, with whatever (hostile) numbers it is given."""
    proto = protos.BundleEntryProto(dtype=dtype, offset=offset, size=size, crc32c=crc)
    for dim in shape:
        proto.shape.dim.add(size=dim)
    for extents in slices:
        tensor_slice = proto.slices.add()
        for start, length in extents:
            tensor_slice.extent.add(start=start, length=length)
    return proto.SerializeToString()


def write_index(
    prefix: Path, records: Iterable[tuple[bytes, bytes]], data: bytes = b"\0" * 64, shards: int = 1
) -> Path:
    """A bundle index holding exactly `records` in the order given (keys out of order, or no header, where a
    test wants them), and data shard 0 of `shards` holding `data`."""
    with open(f"{prefix}.index", "wb") as out:
        table = TableBuilder(out)
        for key, value in records:
            table.last_key = None  # the builder refuses keys out of order; a hostile index has them
            table.add(key, value)
        table.finish()
    Path(f"{prefix}.data-00000-of-{shards:05d}").write_bytes(data)
    return prefix


def copy_checkpoint(prefix: Path, directory: Path) -> Path:
    """Copy every file of the checkpoint at `prefix` into `directory`; returns the new prefix."""
    directory.mkdir(parents=True, exist_ok=True)
    for file in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy2(file, directory / file.name)
    return directory / prefix.name


def file_bytes(prefix: Path) -> dict[str, bytes]:
    """Every file of a checkpoint by name, to prove inputs were not modified."""
    return {p.name: p.read_bytes() for p in sorted(prefix.parent.iterdir()) if p.is_file()}


SLOW_MODULES = {"test_kill", "test_fuzz"}  # real processes killed at measured moments; fuzz batches


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers follow from what a test uses: `-m "not tf"` is the suite without TensorFlow, `-m "not slow"` quick."""
    for item in items:
        if "tf" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.tf)
        if item.module is not None and item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def restored_logits(tf, meta, prefix, images, feed=None):
    """The `logits:0` of the TF1 graph at `meta` with the variables `prefix` holds restored (the others
    initialised), for `images` fed to `input:0`; no update op is run."""
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as session:
        tf1.train.import_meta_graph(str(meta), clear_devices=True)
        stored = {name for name, _ in tf.train.list_variables(str(prefix))}
        variables = tf1.global_variables()
        session.run(tf1.variables_initializer([v for v in variables if v.op.name not in stored]))
        tf1.train.Saver([v for v in variables if v.op.name in stored]).restore(session, str(prefix))
        return session.run("logits:0", {"input:0": images, **(feed or {})})
