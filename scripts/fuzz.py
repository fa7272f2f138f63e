"""A long fuzz campaign over mutated real checkpoint bytes; keeps every crasher in tests/crashers/.

    python scripts/fuzz.py --minutes 10 [--seed 1]

Each case is a fixture file with 1-4 random edits (flip, set, truncate, insert, duplicate), or (one case in
four) a structural edit made on purpose: a declared shape, a slice spec, an HDF5 storage layout (external,
virtual, linked, sparse, compressed) or a zip member size set to a hostile value. TF bundles are
checked in process (an alarm catches hangs); HDF5 and zip files as CLI processes in batches, where the
stall watchdog must turn a libhdf5 loop into a one-line error. An outcome other than a report or a
one-line error is a crasher: a mutated file is saved as `<seed>-<hash>`, and tests/test_hostile.py
replays every saved crasher from then on; a structural crasher is reported with its kind and rng seed
(rebuild it with fuzzing.structured_case).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fuzzing import (
    IN_PROCESS,
    SEEDS,
    STRUCTURED,
    cli_outcomes,
    mutate,
    outcome,
    seed_bytes,
    structured_case,
    write_case,
)

CRASHERS = Path(__file__).resolve().parent.parent / "tests" / "crashers"
BATCH = 40


def keep(seed: str, data: bytes, why: str) -> None:
    name = f"{seed}-{hashlib.sha256(data).hexdigest()[:12]}"
    (CRASHERS / name).write_bytes(data)
    print(f"crasher {name}: {why}", file=sys.stderr, flush=True)


def _structured_outcome(kind: str, path: Path) -> str:
    if kind in ("shape", "slices"):
        try:
            outcome(path)
        except Exception as error:  # anything but a report or a CheckpointError
            return f"{type(error).__name__}: {error}"
        return "ok"
    return cli_outcomes([path])[path]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.minutes * 60
    originals = {name: seed_bytes(name) for name in SEEDS}
    cases = crashes = 0
    pending: list[tuple[str, bytes, Path]] = []
    with tempfile.TemporaryDirectory() as scratch:
        while time.monotonic() < deadline:
            if rng.random() < 0.25:
                kind, case_seed = rng.choice(STRUCTURED), rng.randrange(1 << 32)
                directory = Path(scratch) / str(cases)
                directory.mkdir()
                path = structured_case(directory, kind, random.Random(case_seed))
                cases += 1
                why = _structured_outcome(kind, path)
                if why != "ok":
                    crashes += 1
                    print(f"structural crasher {kind} (rng seed {case_seed}): {why}", file=sys.stderr, flush=True)
                continue
            seed = rng.choice(sorted(SEEDS))
            edits = [
                (
                    rng.choice(["flip", "set", "truncate", "insert", "duplicate"]),
                    rng.randrange(1 << 20),
                    rng.randrange(256),
                )
                for _ in range(rng.randint(1, 4))
            ]
            data = mutate(originals[seed], edits)
            directory = Path(scratch) / str(cases)
            directory.mkdir()
            path = write_case(directory, seed, data)
            cases += 1
            if seed in IN_PROCESS:
                try:
                    outcome(path)
                except Exception as error:  # anything but a report or a CheckpointError is a crasher
                    crashes += 1
                    keep(seed, data, f"{type(error).__name__}: {error}")
                continue
            pending.append((seed, data, path))
            if len(pending) >= BATCH:
                results = cli_outcomes([p for _, _, p in pending])
                for seed_name, bytes_, case in pending:
                    if results[case] != "ok":
                        crashes += 1
                        keep(seed_name, bytes_, results[case])
                pending.clear()
    print(f"{cases} cases, {crashes} crashers (seed {args.seed})")


if __name__ == "__main__":
    main()
