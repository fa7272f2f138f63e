"""Every rule in the catalogue fires on a checkpoint built here for it, and every kind of damage a reader can
report has exactly one rule: a new rule without a case here, or a problem kind no rule reports, fails.

Each case builds the smallest checkpoint that shows its damage (a TF1 bundle of one BatchNorm layer, or a
Keras file) and runs the real `check`; the rule must be among the findings, naming the damaged subject."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import FLOAT32, KERAS, bundle_header, entry_proto, write_index

from ckptdoctor import check, dtypes
from ckptdoctor.formats.crc import crc32c, mask
from ckptdoctor.formats.model_spec import ModelVariable
from ckptdoctor.model import Format, ProblemKind, Report
from ckptdoctor.rules import CATALOGUE
from ckptdoctor.writer.bundle import BundleWriter

BN = "net/conv/BatchNorm"
WEIGHTS = "net/conv/weights"


def healthy_tensors() -> dict[str, np.ndarray]:
    """One conv and its BatchNorm layer, with statistics that training moved (no rule fires on these)."""
    return {
        WEIGHTS: np.array([0.5, -0.25, 1.0, 2.0], "<f4"),
        f"{BN}/beta": np.array([0.1, -0.1], "<f4"),
        f"{BN}/gamma": np.array([1.1, 0.9], "<f4"),
        f"{BN}/moving_mean": np.array([0.3, -0.2], "<f4"),
        f"{BN}/moving_variance": np.array([0.8, 1.7], "<f4"),
    }


def write_bundle(prefix: Path, tensors: dict[str, np.ndarray], bad_crc: str | None = None) -> Path:
    """A valid TF1 name-based bundle written by ckptdoctor's writer; `bad_crc` names a tensor stored with
    a checksum its bytes do not have."""
    writer = BundleWriter(str(prefix))
    for name in sorted(tensors):
        raw = tensors[name].astype("<f4").tobytes()
        crc = mask(crc32c(raw) ^ (1 if name == bad_crc else 0))
        writer.add(name.encode(), FLOAT32, tensors[name].shape, raw, crc)
    writer.commit()
    return prefix


def with_tensors(**changes: np.ndarray | None) -> dict[str, np.ndarray]:
    """The healthy tensors with some BatchNorm parts replaced (or dropped, given None)."""
    tensors = healthy_tensors()
    for part, values in changes.items():
        if values is None:
            del tensors[f"{BN}/{part}"]
        else:
            tensors[f"{BN}/{part}"] = values
    return tensors


def stored(values: list[float]) -> tuple[bytes, int]:
    raw = np.array(values, "<f4").tobytes()
    return raw, mask(crc32c(raw))


# ---- one construction per rule: (path to check, keyword arguments of check, subject the finding names) ----

Case = tuple[Path, dict, str]


def bn_missing_moving_stats(tmp: Path) -> Case:
    return write_bundle(tmp / "model.ckpt", with_tensors(moving_mean=None, moving_variance=None)), {}, BN


def bn_stats_at_init(tmp: Path) -> Case:
    tensors = with_tensors(moving_mean=np.zeros(2, "<f4"), moving_variance=np.ones(2, "<f4"))
    return write_bundle(tmp / "model.ckpt", tensors), {}, BN


def bn_stats_match_reference(tmp: Path) -> Case:
    reference = write_bundle(tmp / "pretrained", healthy_tensors())
    tuned = healthy_tensors()
    tuned[WEIGHTS] = tuned[WEIGHTS] * 2  # the weights trained, the statistics did not move
    return write_bundle(tmp / "finetuned", tuned), {"reference": reference}, BN


def bn_variance_nonpositive(tmp: Path) -> Case:
    return write_bundle(tmp / "model.ckpt", with_tensors(moving_variance=np.array([-0.5, 1.0], "<f4"))), {}, BN


def bn_stats_stale(tmp: Path) -> Case:
    # 0.99**10 = 90% of the starting statistics left after 10 steps at decay 0.99
    return write_bundle(tmp / "model.ckpt", healthy_tensors()), {"decay": 0.99, "steps": 10}, BN


def bn_variance_all_zero(tmp: Path) -> Case:
    return write_bundle(tmp / "model.ckpt", with_tensors(moving_variance=np.zeros(2, "<f4"))), {}, BN


def nonfinite_values(tmp: Path) -> Case:
    tensors = healthy_tensors()
    tensors[WEIGHTS] = np.array([0.5, np.nan, np.inf, 2.0], "<f4")
    return write_bundle(tmp / "model.ckpt", tensors), {}, WEIGHTS


def ema_partial_coverage(tmp: Path) -> Case:
    tensors = healthy_tensors()  # the conv's weights are averaged; the BatchNorm layer's variables are not
    tensors[f"{WEIGHTS}/ExponentialMovingAverage"] = tensors[WEIGHTS] * 0.9
    return write_bundle(tmp / "model.ckpt", tensors), {}, BN


def crc_mismatch(tmp: Path) -> Case:
    return write_bundle(tmp / "model.ckpt", healthy_tensors(), bad_crc=WEIGHTS), {}, WEIGHTS


def missing_data_shard(tmp: Path) -> Case:
    prefix = write_bundle(tmp / "model.ckpt", healthy_tensors())
    Path(f"{prefix}.data-00000-of-00001").unlink()
    return prefix, {}, f"{prefix}.data-00000-of-00001"


def tensor_out_of_bounds(tmp: Path) -> Case:
    prefix = write_bundle(tmp / "model.ckpt", {WEIGHTS: healthy_tensors()[WEIGHTS]})
    data = Path(f"{prefix}.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:-1])  # the last byte of the only tensor is gone
    return prefix, {}, WEIGHTS


def size_mismatch(tmp: Path) -> Case:
    raw, crc = stored([1.0, 2.0, 3.0])  # 12 bytes stored for a float32[4], which needs 16
    records = [bundle_header(), (WEIGHTS.encode(), entry_proto([4], len(raw), crc=crc))]
    return write_index(tmp / "model.ckpt", records, raw), {}, WEIGHTS


def index_unsorted(tmp: Path) -> Case:
    (raw_b, crc_b), (raw_a, crc_a) = stored([1.0]), stored([2.0])
    records = [bundle_header(), (b"b", entry_proto([1], 4, 0, crc_b)), (b"a", entry_proto([1], 4, 4, crc_a))]
    return write_index(tmp / "model.ckpt", records, raw_b + raw_a), {}, "a"


def index_missing_header(tmp: Path) -> Case:
    raw, crc = stored([1.0])
    prefix = write_index(tmp / "model.ckpt", [(WEIGHTS.encode(), entry_proto([1], len(raw), crc=crc))], raw)
    return prefix, {}, f"{prefix}.index"


def index_corrupt(tmp: Path) -> Case:
    raw, crc = stored([1.0])
    records = [bundle_header(), (b"bad", b"\xff\xff\xff"), (WEIGHTS.encode(), entry_proto([1], len(raw), crc=crc))]
    return write_index(tmp / "model.ckpt", records, raw), {}, "bad"


def _keras_copy(tmp: Path) -> tuple[Path, str]:
    """A copy of the healthy Keras 3 .weights.h5 and the name of its first float dataset."""
    path = tmp / "model.weights.h5"
    shutil.copy(KERAS / "healthy" / "model.weights.h5", path)
    with h5py.File(path) as file:
        names: list[str] = []
        file.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        name = next(n for n in names if file[n].dtype == np.float32 and file[n].size >= 64)
    return path, name


def dataset_unreadable(tmp: Path) -> Case:
    path, name = _keras_copy(tmp)
    with h5py.File(path, "r+") as file:  # the same values, stored as one deflated chunk
        values = file[name][()]
        del file[name]
        file.create_dataset(name, data=values, chunks=values.shape, compression="gzip")
        chunk = file[name].id.get_chunk_info(0)
    with open(path, "r+b") as raw:  # garble the middle of the deflate stream
        raw.seek(chunk.byte_offset + chunk.size // 2)
        raw.write(b"\xa5" * max(1, chunk.size // 4))
    with h5py.File(path) as file, pytest.raises(OSError):  # the premise: HDF5 itself cannot read it
        file[name][()]
    return path, {}, name


def archive_corrupt(tmp: Path) -> Case:
    damaged = tmp / "model.keras"
    data = bytearray((KERAS / "healthy" / "model.keras").read_bytes())
    with zipfile.ZipFile(KERAS / "healthy" / "model.keras") as archive:
        info = archive.getinfo("model.weights.h5")
    data[info.header_offset + 200 + info.file_size // 2] ^= 0xFF  # inside the member, past its local header
    damaged.write_bytes(bytes(data))
    return damaged, {}, "model.weights.h5"


def external_data(tmp: Path) -> Case:
    path, name = _keras_copy(tmp)
    outside = tmp / "outside.bin"
    with h5py.File(path, "r+") as file:
        shape, dtype = file[name].shape, file[name].dtype
        outside.write_bytes(b"\0" * (int(np.prod(shape)) * dtype.itemsize))
        del file[name]
        file.create_dataset(name, shape=shape, dtype=dtype, external=[(str(outside), 0, outside.stat().st_size)])
    return path, {}, name


CASES: dict[str, Callable[[Path], Case]] = {
    "BN001": bn_missing_moving_stats,
    "BN002": bn_stats_at_init,
    "BN003": bn_stats_match_reference,
    "BN004": bn_variance_nonpositive,
    "BN005": bn_stats_stale,
    "BN006": bn_variance_all_zero,
    "VAL001": nonfinite_values,
    "EMA001": ema_partial_coverage,
    "INT001": crc_mismatch,
    "INT002": missing_data_shard,
    "INT003": tensor_out_of_bounds,
    "INT004": size_mismatch,
    "INT005": index_unsorted,
    "INT006": index_missing_header,
    "INT007": index_corrupt,
    "INT008": dataset_unreadable,
    "INT009": archive_corrupt,
    "INT010": external_data,
}


# ---- the mapping rules fire in `match`, against the model a checkpoint must load into ----

MATCH = Path(__file__).resolve().parent.parent / "fixtures" / "match"
MODEL_META = MATCH / "model.meta"


def _model_bundle(tmp: Path, **changes: np.ndarray | None) -> Path:
    """Exactly the variables the fixtures' meta graph restores (zeros), with some replaced, dropped or added."""
    from ckptdoctor.match import load_model

    tensors: dict[str, np.ndarray | None] = {
        v.name: np.zeros(v.shape, "<f4") for v in load_model(meta_graph=str(MODEL_META)) if v.shape is not None
    }
    tensors.update({name.replace("__", "/"): values for name, values in changes.items()})
    writer = BundleWriter(str(tmp / "model.ckpt"))
    for name in sorted(tensors):
        values = tensors[name]
        if values is not None:
            raw = values.tobytes()
            writer.add(name.encode(), dtypes.BY_NAME[values.dtype.name].code, values.shape, raw, mask(crc32c(raw)))
    writer.commit()
    return tmp / "model.ckpt"


def _matched(checkpoint: Path, subject: str) -> tuple[Report, str]:
    from ckptdoctor.match import match

    return match(checkpoint, meta_graph=str(MODEL_META))[1], subject


def _fresh_training_state(tmp: Path) -> tuple[Report, str]:
    """A training graph whose step counter the checkpoint lacks: restoring starts it from zero."""
    from ckptdoctor.match import load_model, match_variables
    from ckptdoctor.rules.mapping import findings

    model = (*load_model(meta_graph=str(MODEL_META)), ModelVariable("global_step", "int64", (), False))
    stored = check(_model_bundle(tmp)).variables
    result = match_variables(model, stored)
    return Report("", Format.TF1_NAME_BASED, "", None, "", stored, (), findings(result)), "global_step"


MATCH_CASES: dict[str, Callable[[Path], tuple[Report, str]]] = {
    "MAP001": lambda tmp: _matched(
        _model_bundle(tmp, batch_normalization__moving_mean=None), "batch_normalization/moving_mean"
    ),
    "MAP002": lambda tmp: _matched(MATCH / "head" / "model.ckpt", "dense/kernel"),
    "MAP003": lambda tmp: _matched(_model_bundle(tmp, dense__bias=np.zeros(4, "<f8")), "dense/bias"),
    "MAP004": lambda tmp: _matched(_model_bundle(tmp, extra__weights=np.zeros(2, "<f4")), "extra/weights"),
    "MAP005": lambda tmp: _matched(MATCH / "prefix" / "model.ckpt", "the checkpoint has the extra scope 'tower_0/'"),
    "MAP006": lambda tmp: _matched(MATCH / "ambiguous" / "model.ckpt", "batch_normalization/beta"),
    "MAP007": _fresh_training_state,
}


def _fired(report: Report, code: str) -> set[str]:
    """Each finding of the rule by its subject and by its raw key: the cases name what the file stores."""
    return {name for f in report.findings if f.code == code for name in (f.subject, f.key) if name is not None}


@pytest.mark.parametrize("rule", CATALOGUE, ids=[rule.code for rule in CATALOGUE])
def test_every_rule_fires_on_its_case(rule, tmp_path):
    assert rule.code in CASES | MATCH_CASES, f"{rule.code} {rule.name} has no case in tests/test_rule_coverage.py"
    if rule.code in MATCH_CASES:
        report, subject = MATCH_CASES[rule.code](tmp_path)
    else:
        path, options, subject = CASES[rule.code](tmp_path)
        report = check(path, **options)
    assert subject in _fired(report, rule.code), [(f.code, f.subject) for f in report.findings]
    damage = {finding.code for finding in report.findings if finding.code.startswith("INT")}
    assert damage <= {rule.code}, f"the case for {rule.code} also damages what {damage} report"


def test_every_case_is_a_rule_in_the_catalogue():
    assert set(CASES) | set(MATCH_CASES) == {rule.code for rule in CATALOGUE}


def test_the_healthy_bundle_fires_nothing(tmp_path):
    """The cases' damage is what fires: the checkpoint they start from is clean alone and as its own reference."""
    prefix = write_bundle(tmp_path / "model.ckpt", healthy_tensors())
    assert check(prefix).findings == ()
    assert check(prefix, reference=prefix).findings == ()


@pytest.mark.parametrize("kind", list(ProblemKind))
def test_every_problem_kind_is_reported_by_exactly_one_rule(kind):
    reporting = [rule.code for rule in CATALOGUE if rule.reports is kind]
    assert len(reporting) == 1, f"{kind.value}: reported by {reporting or 'no rule'}"
    assert next(rule for rule in CATALOGUE if rule.reports is kind).name == kind.value  # the slug is the kind


def test_only_integrity_rules_report_problem_kinds():
    assert {rule.code for rule in CATALOGUE if rule.reports is not None} == {
        rule.code for rule in CATALOGUE if rule.code.startswith("INT")
    }
