"""Mutations of real checkpoint bytes and the one outcome rule, shared by the fuzz test and scripts/fuzz.py."""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

from ckptdoctor import check
from ckptdoctor.model import CheckpointError

ROOT = Path(__file__).resolve().parent.parent / "fixtures"
# (label, checkpoint to copy, the file in it to mutate): index, data, HDF5 (two layouts) and zip bytes.
SEEDS = {
    "index": (ROOT / "tf1" / "finetune_full" / "model.ckpt-20", ".index"),
    "data": (ROOT / "tf1" / "finetune_full" / "model.ckpt-20", ".data-00000-of-00001"),
    "tf2-index": (ROOT / "keras" / "healthy" / "ckpt" / "model", ".index"),
    "tf2-data": (ROOT / "keras" / "healthy" / "ckpt" / "model", ".data-00000-of-00001"),
    "weights-h5": (ROOT / "keras" / "healthy" / "model.weights.h5", ""),
    "legacy-h5": (ROOT / "keras2" / "model_weights.h5", ""),
    "keras-zip": (ROOT / "keras" / "stats_removed" / "model.keras", ""),
}


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: flip, set, truncate, insert, duplicate a span."""
    out = bytearray(data)
    for kind, position, value in edits:
        if not out:
            break
        at = position % len(out)
        if kind == "flip":
            out[at] ^= 1 << (value % 8)
        elif kind == "set":
            out[at] = value % 256
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = bytes([value % 256]) * (1 + value % 17)
        elif kind == "duplicate":
            out[at:at] = out[at : at + 1 + value % 64]
    return bytes(out)


def write_case(directory: Path, seed: str, data: bytes) -> Path:
    """The seed checkpoint copied to `directory` with its mutated file; returns the path to check."""
    prefix, suffix = SEEDS[seed]
    if suffix:
        for member in prefix.parent.glob(prefix.name + ".*"):
            shutil.copy(member, directory / member.name)
        (directory / (prefix.name + suffix)).write_bytes(data)
        return directory / prefix.name
    target = directory / prefix.name
    target.write_bytes(data)
    return target


def seed_bytes(seed: str) -> bytes:
    prefix, suffix = SEEDS[seed]
    return Path(str(prefix) + suffix).read_bytes()


# ---- structured mutations: the fields an attacker writes on purpose, not random bytes ------------------

PARTITIONED = ROOT / "tf1" / "partitioned" / "model.ckpt"
HUGE_DIMS = [0, 1, 3, 1 << 16, 1 << 30, 1 << 32, 1 << 62]
STRUCTURED = ("shape", "slices", "hdf5-layout", "zip-sizes")


def _rewrite_index(prefix: Path, change) -> None:
    """Rewrite a copied bundle's index with `change(key, BundleEntryProto)` applied to its entries."""
    from ckptdoctor.formats import protos
    from ckptdoctor.formats.bytesource import LocalFile
    from ckptdoctor.formats.sstable import TableBuilder, TableReader

    with LocalFile(f"{prefix}.index") as source:
        records = list(TableReader(source))
    with open(f"{prefix}.index", "wb") as out:
        table = TableBuilder(out)
        for key, value in records:
            if key:
                entry = protos.BundleEntryProto.FromString(value)
                change(key, entry)
                value = entry.SerializeToString()
            table.add(key, value)
        table.finish()


def structured_case(directory: Path, kind: str, rng: random.Random) -> Path:
    """A copy of a fixture with one structural field set to a hostile value; returns the path to check."""
    if kind == "shape":  # declared shapes that the stored bytes do not back
        prefix = _copy_bundle(SEEDS["index"][0], directory)

        def reshape(key: bytes, entry) -> None:
            if rng.random() < 0.5:
                dims = entry.shape.dim
                if dims and rng.random() < 0.7:
                    dims[rng.randrange(len(dims))].size = rng.choice(HUGE_DIMS)
                else:
                    dims.add(size=rng.choice(HUGE_DIMS))

        _rewrite_index(prefix, reshape)
        return prefix
    if kind == "slices":  # slice specs of a partitioned variable: extents and full shapes
        prefix = _copy_bundle(PARTITIONED, directory)

        def reslice(key: bytes, entry) -> None:
            if entry.slices and rng.random() < 0.8:
                tensor_slice = rng.choice(entry.slices)
                if tensor_slice.extent and rng.random() < 0.8:
                    extent = rng.choice(tensor_slice.extent)
                else:
                    extent = tensor_slice.extent.add()
                setattr(extent, rng.choice(["start", "length"]), rng.choice([-1, *HUGE_DIMS]))
            if entry.shape.dim and rng.random() < 0.3:
                entry.shape.dim[0].size = rng.choice(HUGE_DIMS)

        _rewrite_index(prefix, reslice)
        return prefix
    if kind == "hdf5-layout":
        return _hdf5_layout_case(directory, rng)
    return _zip_sizes_case(directory, rng)


def _copy_bundle(prefix: Path, directory: Path) -> Path:
    for member in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy(member, directory / member.name)
    return directory / prefix.name


def _hdf5_layout_case(directory: Path, rng: random.Random) -> Path:
    """One dataset of a .weights.h5 remade with a hostile storage layout (external, virtual, sparse, huge)."""
    import h5py
    import numpy as np

    path = directory / "model.weights.h5"
    shutil.copy(SEEDS["weights-h5"][0], path)
    outside = directory / "outside.bin"
    outside.write_bytes(b"SECRET" * 64)
    with h5py.File(path, "r+") as file:
        names: list[str] = []
        file.visit(lambda name: names.append(name) if isinstance(file[name], h5py.Dataset) else None)
        name = rng.choice(sorted(names))
        shape = file[name].shape or (1,)
        del file[name]
        layout = rng.choice(["external", "virtual", "link", "sparse", "compressed", "contiguous-empty"])
        if layout == "external":
            file.create_dataset(name, shape=shape, dtype="<f4", external=[(str(outside), 0, h5py.h5f.UNLIMITED)])
        elif layout == "virtual":
            virtual = h5py.VirtualLayout(shape=shape, dtype="<f4")
            virtual[...] = h5py.VirtualSource(str(outside), "x", shape=shape)
            file.create_virtual_dataset(name, virtual)
        elif layout == "link":
            file[name] = h5py.ExternalLink(str(outside), "/x")
        elif layout == "sparse":
            file.create_dataset(name, shape=(1, rng.choice([1 << 20, 1 << 30])), chunks=(1, 1 << 12), dtype="<f4")
        elif layout == "compressed":
            big = np.zeros((1 << 22,), dtype="<f4")
            file.create_dataset(name, data=big, chunks=(1 << rng.randrange(8, 22),), compression="gzip")
        else:
            file.create_dataset(name, shape=(rng.choice([1 << 20, 1 << 28]),), dtype="<f4")
    return path


def _zip_sizes_case(directory: Path, rng: random.Random) -> Path:
    """A .keras whose central directory declares other member sizes (or overlapping offsets)."""
    data = bytearray(seed_bytes("keras-zip"))
    entries = [i for i in range(len(data) - 46) if data[i : i + 4] == b"PK\x01\x02"]
    at = rng.choice(entries)
    field = rng.choice([20, 24, 42])  # compressed size, uncompressed size, local header offset
    struct.pack_into("<I", data, at + field, rng.choice([0, 1, 100, 1 << 20, 1 << 30, 0xFFFFFFFF]))
    path = directory / "model.keras"
    path.write_bytes(bytes(data))
    return path


# Formats read in pure Python, where an alarm can interrupt a hang; HDF5 is read by libhdf5, which
# can loop in C on damaged metadata: those cases run as CLI processes guarded by the stall watchdog.
IN_PROCESS = {"index", "data", "tf2-index", "tf2-data"}


class Hang(Exception):
    pass


def cli_outcomes(paths: list[Path], stall_seconds: int = 10) -> dict[Path, str]:
    """Check many paths in one CLI process; where it fails as a batch, each path alone. Outcome per path:
    'ok' (exit 0/1, or 2 with exactly one error line and no traceback) or a description of what went wrong."""
    env = {**os.environ, "CKPTDOCTOR_STALL_SECONDS": str(stall_seconds), "CKPTDOCTOR_DEBUG": ""}

    def run(batch: list[Path]) -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "ckptdoctor", "check", *map(str, batch), "--format", "json"]
        return subprocess.run(command, capture_output=True, env=env, timeout=60 + stall_seconds * 3)

    def judge(raw: subprocess.CompletedProcess[bytes], expected_errors: int) -> str:
        try:
            result = subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(), raw.stderr.decode())
        except UnicodeDecodeError as error:
            return f"output is not valid UTF-8 ({error})"
        if "Traceback" in result.stderr or "unexpected" in result.stderr:
            return f"traceback or unexpected error: {result.stderr.strip()[-500:]}"
        if result.returncode not in (0, 1, 2):
            return f"exit code {result.returncode}: {result.stderr.strip()[-300:]}"
        lines = result.stderr.strip().splitlines()
        if result.returncode == 2 and len(lines) > expected_errors:
            return f"more than one line per unreadable path: {lines[:3]}"
        return "ok"

    batch = run(paths)
    if judge(batch, len(paths)) == "ok" and b"no progress for" not in batch.stderr:
        return dict.fromkeys(paths, "ok")
    return {path: judge(run([path]), 1) for path in paths}


def outcome(path: Path, seconds: int = 20) -> str:
    """In process: 'report' or 'error' (CheckpointError); anything else propagates. A hang raises Hang."""

    def alarm(*_):
        raise Hang(f"check({path}) took over {seconds}s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        check(path)
        return "report"
    except CheckpointError as error:
        assert "\n" not in str(error), "errors must be one line"
        return "error"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
