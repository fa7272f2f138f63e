"""Rules about damaged bytes, found by the reader during its single scan of the checkpoint."""

from __future__ import annotations

from collections.abc import Iterator

from ckptdoctor.model import Finding, ProblemKind, Severity
from ckptdoctor.rules.base import CheckContext, Rule


def _problems_of_kind(rule: Rule, ctx: CheckContext) -> Iterator[Finding]:
    for problem in ctx.scan.problems:
        if problem.kind is rule.reports:
            subject = ctx.tensor_subject(problem.subject)
            yield rule.finding(
                subject,
                f"{rule.title}: {subject} ({problem.detail})",
                key=problem.subject,
                detail=problem.detail,
                family=ctx.family,
            )


def _integrity_rule(code: str, kind: ProblemKind, title: str, explanation: str, hint: str) -> Rule:
    """The rule that reports `kind`; its slug is the kind's value."""
    return Rule(code, kind.value, Severity.ERROR, title, explanation, hint, _problems_of_kind, reports=kind)


_REWRITE = "restore the file from its source (re-download, or save again from the training job)"

RULES = (
    _integrity_rule(
        "INT001",
        ProblemKind.CRC_MISMATCH,
        "Tensor bytes do not match their checksum",
        "Every tensor in a TF bundle carries a CRC-32C of its bytes in the index. The stored bytes no longer "
        "hash to it: the data file was damaged on disk or in transfer. TensorFlow fails the restore with "
        "`DataLoss: Checksum does not match`.",
        _REWRITE,
    ),
    _integrity_rule(
        "INT002",
        ProblemKind.MISSING_DATA_SHARD,
        "A data shard named by the index is missing",
        "The index points at `<prefix>.data-NNNNN-of-NNNNN` files; at least one is absent, usually because "
        "only the .index was copied or an upload stopped early. TensorFlow fails with `NotFoundError`.",
        "copy every <prefix>.data-* file together with the .index",
    ),
    _integrity_rule(
        "INT003",
        ProblemKind.TENSOR_OUT_OF_BOUNDS,
        "Tensor bytes lie past the end of their data shard",
        "The index records an offset and size beyond the end of the data file: the file was truncated, "
        "typically by an interrupted download or a full disk during the save.",
        _REWRITE,
    ),
    _integrity_rule(
        "INT004",
        ProblemKind.SIZE_MISMATCH,
        "Stored size does not match dtype and shape",
        "A tensor's byte size in the index is not its element count times the element size. TensorFlow "
        "refuses to read it (`DataLoss`). The index was written by a broken tool or damaged. In an HDF5 file, "
        "a dataset declares more bytes than the file stores (chunks never written): h5py would hand out fill "
        "values, so ckptdoctor reports it instead of reading gigabytes of nothing.",
        _REWRITE,
    ),
    _integrity_rule(
        "INT005",
        ProblemKind.INDEX_UNSORTED,
        "Index keys are out of order",
        "Keys in a checkpoint index must be strictly increasing bytewise. TensorFlow lists such a file but "
        "fails lookups for some keys with `NotFoundError: Key ... not found`: a tool wrote the index unsorted.",
        "rewrite the checkpoint with a correct writer (ckptdoctor patch writes sorted indexes)",
    ),
    _integrity_rule(
        "INT006",
        ProblemKind.INDEX_MISSING_HEADER,
        "Index has no header entry",
        "The first entry of a checkpoint index must be the header (empty key). Without it TensorFlow "
        "silently reads the first tensor as the header and that tensor disappears from the checkpoint.",
        "rewrite the checkpoint with a correct writer",
    ),
    _integrity_rule(
        "INT007",
        ProblemKind.INDEX_CORRUPT,
        "Part of the index is damaged",
        "A block of the checkpoint index fails its CRC-32C (TensorFlow always checks it and fails with "
        "`DataLoss`/`failed to seek to header entry`), or an entry cannot be decoded. The tensors listed in that "
        "block are unreachable; the rest were read and checked.",
        _REWRITE,
    ),
    _integrity_rule(
        "INT008",
        ProblemKind.DATASET_UNREADABLE,
        "An HDF5 dataset cannot be read",
        "h5py opened the file but reading this dataset failed: its chunks or metadata are damaged, often by a "
        "partial copy. Keras fails to load the weights with an OSError from HDF5.",
        _REWRITE,
    ),
    _integrity_rule(
        "INT009",
        ProblemKind.ARCHIVE_CORRUPT,
        "A member of the .keras archive fails its CRC",
        "A `.keras` file is a zip archive; a member's bytes no longer match the CRC-32 the archive records, "
        "so `keras.saving.load_model` fails with `BadZipFile: Bad CRC-32`.",
        _REWRITE,
    ),
    _integrity_rule(
        "INT010",
        ProblemKind.EXTERNAL_DATA,
        "Values stored outside the checkpoint file",
        "An HDF5 dataset uses external raw storage, is a virtual dataset, or is an external link: its values "
        "live in another file, which h5py and Keras would silently read (any file the path names, a secret "
        "included). A checkpoint is one file, so ckptdoctor lists such a dataset but never follows it, and "
        "`patch` refuses the file.",
        "save the weights again from the model so that every value is stored in the file itself",
    ),
)
