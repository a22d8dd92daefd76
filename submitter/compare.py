"""Paired comparisons of jobs on the same examples: `submit compare`, the leaderboard's ties with
the best, and the report's comparison of the top two.

Two accuracies measured on the same few hundred images are compared example by example, not as
two rounded numbers: only the images where exactly one model is right carry information
(`shared.stats.mcnemar_exact`). The per-example results are files in the artifact store:

- validation: a train/finetune job's `val_correct` (its best epoch; `shared.stats.encode_correct`);
- test: the `test_correct` of the evaluation of the job's model, or, from evaluations written
  before that file existed, its `predictions_csv` (`true_class == predicted_class` per row, in file
  order; the examples are the `file` column, so the identity is computed the same way).

Two files are compared only when they are about the same examples in the same order (their
`examples` identity); anything else is refused with one line, never guessed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from shared import stats
from shared.errors import BadInputError, NotFoundError
from shared.jobs import JobRecord
from shared.paths import check_id
from shared.ports import ArtifactStore, Backend
from shared.ranking import TRAINED_KINDS
from shared.status import JobStatus

Split = Literal["val", "test"]
SPLITS = ("val", "test")
_PREDICTION_COLUMNS = {"file", "true_class", "predicted_class"}


def read_artifact(artifacts: ArtifactStore, key: str) -> bytes:
    """Bytes of an artifact a record names. Records hold keys; the store's own parser
    (`ArtifactStore.key_for`) still checks each one, so a record that names a local path or
    another bucket is refused (BadInputError) and nothing is read from this machine's disk."""
    return artifacts.get_bytes(artifacts.key_for(key))


# --- one job's per-example results ---------------------------------------------------------------


def val_results(artifacts: ArtifactStore, record: JobRecord) -> stats.ExampleResults:
    """Which validation examples the job's best epoch got right.

    Raises:
        BadInputError: the job has no such file (not a trained model, or trained before they were
            kept), or the file is not a correctness file.
        NotFoundError: the record names a file the store does not have.
    """
    key = record.artifacts.get("val_correct")
    if record.kind not in TRAINED_KINDS or not key:
        raise BadInputError(f"job {record.job_id} has no per-example validation results (val_correct)")
    return stats.decode_correct(read_artifact(artifacts, key))


def evaluation_results(artifacts: ArtifactStore, evaluation: JobRecord) -> stats.ExampleResults:
    """Which test examples an evaluation got right: its `test_correct` file, else its predictions.

    Raises:
        BadInputError: neither file is recorded, or the one read is malformed.
        NotFoundError: the record names a file the store does not have.
    """
    if evaluation.artifacts.get("test_correct"):
        return stats.decode_correct(read_artifact(artifacts, evaluation.artifacts["test_correct"]))
    if evaluation.artifacts.get("predictions_csv"):
        return predictions_results(read_artifact(artifacts, evaluation.artifacts["predictions_csv"]))
    raise BadInputError(f"evaluation {evaluation.job_id} has no per-example test results "
                        "(test_correct, predictions_csv)")


def predictions_results(data: bytes) -> stats.ExampleResults:
    """An evaluation's predictions CSV as per-example results: one row per test image, in order.

    Raises:
        BadInputError: not UTF-8 CSV with the columns file, true_class and predicted_class, or no rows.
    """
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"predictions CSV is unreadable: {exc}") from None
    if not rows or not _PREDICTION_COLUMNS <= set(rows[0]):
        raise BadInputError(f"predictions CSV needs rows with the columns {', '.join(sorted(_PREDICTION_COLUMNS))}")
    mask = np.array([row["true_class"] == row["predicted_class"] for row in rows], dtype=bool)
    return stats.ExampleResults(examples_id=stats.examples_id([row["file"] or "" for row in rows]), correct=mask)


def evaluation_of(records: Sequence[JobRecord], record: JobRecord) -> JobRecord | None:
    """The evaluation that holds `record`'s test results: itself if it is one, else the latest
    succeeded evaluation whose parent is `record` (None: its model has not seen the test split)."""
    if record.kind == "evaluate":
        return record
    evaluations = [
        r for r in records
        if r.kind == "evaluate" and r.status == JobStatus.SUCCEEDED and r.spec.parent_job_id == record.job_id
    ]
    return max(evaluations, key=lambda r: (r.finished_at or 0.0, r.job_id), default=None)


def optional_val_results(artifacts: ArtifactStore, record: JobRecord) -> stats.ExampleResults | None:
    """`val_results`, or None where there is no readable file (a table shows null, never fails)."""
    try:
        return val_results(artifacts, record)
    except (BadInputError, NotFoundError):  # no file, a missing object or a malformed one: unknown
        return None


# --- ties with the best --------------------------------------------------------------------------


@dataclass(frozen=True)
class Tie:
    """A row's paired comparison with #1: `tied` (None: no comparable file) and the Holm-adjusted p."""

    tied: bool | None
    p_value: float | None


def ties_with_best(results: Sequence[stats.ExampleResults | None], alpha: float = 0.05) -> list[Tie]:
    """For rows best first (`results[0]` is #1's), whether each is statistically tied with #1.

    Every other row whose file is on #1's examples is compared with #1 by the exact McNemar test;
    the p-values are Holm-adjusted across exactly those comparisons (the rows shown together), and
    a row is tied unless its adjusted p <= alpha. #1 is tied with itself (p null); a row without a
    comparable file, and every row when #1 has none, is null: unknown, not "different".
    """
    if not results or results[0] is None:
        return [Tie(None, None) for _ in results]
    best = results[0]
    raw = {i: stats.compare_results(best, r).p_value
           for i, r in enumerate(results[1:], start=1) if r is not None and _same_examples(best, r)}
    adjusted = dict(zip(raw, stats.holm_adjust(list(raw.values()))))
    return [Tie(True, None)] + [
        Tie(None, None) if (p := adjusted.get(i)) is None else Tie(p > alpha, p) for i in range(1, len(results))
    ]


def _same_examples(a: stats.ExampleResults, b: stats.ExampleResults) -> bool:
    return a.examples_id == b.examples_id and a.correct.size == b.correct.size


# --- submit compare --------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobComparison:
    """Two jobs compared on one split: the jobs named, the jobs whose files were read (a train
    job's evaluation on the test split), each accuracy on the compared examples, and the test."""

    split: str
    a_job_id: str
    b_job_id: str
    a_source_job_id: str
    b_source_job_id: str
    a_accuracy: float
    b_accuracy: float
    paired: stats.PairedComparison

    def sentence(self) -> str:
        """E.g. "job 3f2a9b1c0d4e is better than job 9b1c0d4e3f2a on 12 of 14 disagreements, p = 0.013"."""
        return self.paired.sentence(f"job {self.a_job_id}", f"job {self.b_job_id}")

    def document(self) -> dict[str, Any]:
        """`submit compare --format json` (shared/schemas.py: CompareDocument)."""
        return {
            "split": self.split, "a_job_id": self.a_job_id, "b_job_id": self.b_job_id,
            "a_source_job_id": self.a_source_job_id, "b_source_job_id": self.b_source_job_id,
            "a_accuracy": self.a_accuracy, "b_accuracy": self.b_accuracy, "n": self.paired.n,
            "a_only": self.paired.a_only, "b_only": self.paired.b_only,
            "disagreements": self.paired.disagreements, "p_value": self.paired.p_value, "sentence": self.sentence(),
        }


def compare_jobs(backend: Backend, a_id: str, b_id: str, split: str = "val") -> JobComparison:
    """The paired comparison of jobs `a_id` and `b_id` on their validation or test examples.

    Raises:
        BadInputError: an unknown split or job, a job without per-example results on that split
            (on test: a model never evaluated), or files on different examples.
        NotFoundError: a record names a file the store does not have.
    """
    if split not in SPLITS:
        raise BadInputError(f"unknown split {split!r} (val or test)", "--split")
    a, a_source, a_results = _job_results(backend, a_id, split, "A")
    b, b_source, b_results = _job_results(backend, b_id, split, "B")
    if not _same_examples(a_results, b_results):
        raise BadInputError(
            f"jobs {a.job_id} and {b.job_id} were scored on different {split} examples "
            f"({a_results.correct.size} and {b_results.correct.size}; identities {a_results.examples_id[:12]} "
            f"and {b_results.examples_id[:12]}): a paired comparison needs the same examples"
        )
    return JobComparison(
        split, a.job_id, b.job_id, a_source.job_id, b_source.job_id, _accuracy(a_results), _accuracy(b_results),
        stats.compare_results(a_results, b_results),
    )


def _job_results(
    backend: Backend, job_id: str, split: str, what: str
) -> tuple[JobRecord, JobRecord, stats.ExampleResults]:
    """The job named `job_id`, the job whose file holds its results on `split`, and those results."""
    record = backend.store.find_job(check_id(job_id, "job id"))
    if record is None:
        raise BadInputError(f"unknown job {job_id!r}", what)
    try:
        if split == "val":
            source = _trained_model(backend, record)
            return record, source, val_results(backend.artifacts, source)
        source = evaluation_of(backend.store.list_jobs(record.study_id), record)
        if source is None:
            raise BadInputError(f"job {record.job_id} has not been evaluated on the test split "
                                f"(`submit evaluate {record.job_id}`)")
        return record, source, evaluation_results(backend.artifacts, source)
    except NotFoundError as exc:  # the record names a file that is gone: as bad as a missing one
        raise BadInputError(f"job {record.job_id}: {exc}") from None


def _trained_model(backend: Backend, record: JobRecord) -> JobRecord:
    """The job that trained `record`'s model: itself, or an evaluation's parent."""
    if record.kind != "evaluate" or not record.spec.parent_job_id:
        return record
    parent = backend.store.get_job(record.study_id, record.spec.parent_job_id)
    if parent is None:
        raise BadInputError(f"evaluation {record.job_id}: its model's job {record.spec.parent_job_id} is gone")
    return parent


def _accuracy(results: stats.ExampleResults) -> float:
    return float(results.correct.mean()) if results.correct.size else 0.0
