"""Mutated real index, data, HDF5 and zip bytes give a report or a clean error: never a crash, never a hang.

CI runs a bounded number of examples; `python scripts/fuzz.py` runs a long campaign and keeps crashers."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from fuzzing import IN_PROCESS, SEEDS, cli_outcomes, mutate, outcome, seed_bytes, structured_case, write_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EDITS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "truncate", "insert", "duplicate"]),
        st.integers(0, 1 << 20),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(seed=st.sampled_from(sorted(IN_PROCESS)), edits=EDITS)
def test_mutated_tf_bundles_never_crash(seed, edits):
    with tempfile.TemporaryDirectory() as directory:
        path = write_case(Path(directory), seed, mutate(seed_bytes(seed), edits))
        assert outcome(path) in ("report", "error")


def test_mutated_hdf5_and_zip_files_never_crash_or_hang(tmp_path):
    """libhdf5 can loop on damaged metadata, out of reach of Python: these run as CLI processes, where the
    stall watchdog turns such a loop into a one-line error."""
    rng = random.Random(7)
    paths = []
    for number in range(60):
        seed = sorted(set(SEEDS) - IN_PROCESS)[number % 3]
        edits = [
            (rng.choice(["flip", "set", "truncate", "insert", "duplicate"]), rng.randrange(1 << 20), rng.randrange(256))
            for _ in range(rng.randint(1, 3))
        ]
        directory = tmp_path / str(number)
        directory.mkdir()
        paths.append(write_case(directory, seed, mutate(seed_bytes(seed), edits)))
    outcomes = cli_outcomes(paths, stall_seconds=5)
    assert {path: result for path, result in outcomes.items() if result != "ok"} == {}


def test_hostile_structure_gives_a_report_or_one_line(tmp_path):
    """Declared shapes, slice specs, HDF5 storage layouts and zip member sizes set to hostile values on
    purpose: bundles are checked in process (an alarm catches hangs), HDF5 and zip files by the CLI."""
    rng = random.Random(11)
    in_process, by_cli = [], []
    for number in range(48):
        kind = ("shape", "slices", "hdf5-layout", "zip-sizes")[number % 4]
        directory = tmp_path / str(number)
        directory.mkdir()
        path = structured_case(directory, kind, rng)
        (in_process if kind in ("shape", "slices") else by_cli).append(path)
    for path in in_process:
        assert outcome(path) in ("report", "error")
    outcomes = cli_outcomes(by_cli, stall_seconds=5)
    assert {path: result for path, result in outcomes.items() if result != "ok"} == {}
