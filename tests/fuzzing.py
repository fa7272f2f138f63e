"""Mutations of real checkpoint bytes and the one outcome rule, shared by the fuzz test and scripts/fuzz.py."""

from __future__ import annotations

import os
import shutil
import signal
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
