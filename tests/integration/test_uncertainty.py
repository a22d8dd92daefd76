"""Numbers you can trust (issue 17, the submitter's side): intervals on every accuracy, ties with
the best, `submit compare`, the validation-test gap, and how many models have seen the test split.

The study is written through the embedded store's own protocol (claim, finish) with per-example
files written here with `shared.stats.encode_correct`, as a worker writes them; every number the
commands print is recomputed below from those files with the textbook formulas (no shared.stats),
and the headline ones are also written out by hand.

The validation split has 200 examples. A gets the first 180 right. B differs from A on 8 of them
(A alone right on 6, B alone on 2): tied. C differs on 50 (A alone on 45, C alone on 5): worse.
D has no per-example file (trained before they were kept); E's file is on other examples; R is
three seeds of one configuration (0.78, 0.80, 0.88: the best seed would rank above D, the mean
ranks below it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.followups import evaluate_spec
from shared.jobs import JobRecord, job_id_for
from shared.ports import Backend
from shared.schemas import CompareDocument, LeaderboardDocument, StatusDocument
from shared.stats import decode_correct, encode_correct, examples_id
from shared.status import JobStatus
from submitter.cli import app
from submitter.leaderboard import for_table, leaderboard, table_notes
from submitter.report import build_report
from tests.factories import job_spec, study_record

STUDY = "uncertain"
VAL_N, TEST_N = 200, 100
VAL_IDS = examples_id([f"train/c{i % 3}/v{i:03d}.png" for i in range(VAL_N)])
OTHER_IDS = examples_id([f"train/c{i % 3}/w{i:03d}.png" for i in range(150)])
TEST_FILES = [f"test/c{i % 3}/t{i:03d}.png" for i in range(TEST_N)]
Z_95 = 1.959963984540054  # the normal quantile of 0.975 (tables: 1.96)
T_95_2DF = 4.302652729749462  # Student's t quantile of 0.975 on 2 degrees of freedom (tables: 4.303)


def mask(right: set[int] | range, n: int = VAL_N) -> np.ndarray:
    values = np.zeros(n, dtype=bool)
    values[list(right)] = True
    return values


A_MASK = mask(range(180))
B_MASK = mask(set(range(6, 182)))  # A alone right on 0..5, B alone on 180, 181
C_MASK = mask(set(range(45, 185)))  # A alone right on 0..44, C alone on 180..184
P_B = 74 / 256  # exact McNemar, 6 of 8: 2 * (C(8,0) + C(8,1) + C(8,2)) / 2^8
P_C = 2 * sum(math.comb(50, k) for k in range(6)) / 2**50  # 45 of 50


def wilson_by_hand(correct: int, n: int) -> tuple[float, float]:
    """The textbook formula (Wilson 1927), written out again here on purpose."""
    p, z2 = correct / n, Z_95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return centre - half, centre + half


def finish(backend: Backend, record: JobRecord, **changes: object) -> JobRecord:
    """What a worker writes: the claim, then the result (fenced by the attempt)."""
    claimed = backend.store.claim(record.study_id, record.job_id, "w-1", 60, time.time())
    assert claimed is not None
    fields = {"epochs_run": 2, "best_epoch": 2, "finished_at": time.time(), **changes}
    return backend.store.finish(record.study_id, record.job_id, claimed.attempt, JobStatus.SUCCEEDED, fields)


def trained(backend: Backend, learning_rate: float, accuracy: float, examples: int | None = VAL_N,
            correct: bytes | None = None, seed: int = 0) -> JobRecord:
    """A succeeded train job; with `correct`, its val_correct file in the artifact store."""
    spec = job_spec(learning_rate=learning_rate, seed=seed).model_copy(update={"repeat": seed})
    record = JobRecord(study_id=STUDY, job_id=job_id_for(STUDY, spec), spec=spec, created_at=time.time())
    backend.store.create_jobs([record])
    artifacts = {}
    if correct is not None:
        artifacts["val_correct"] = f"studies/{STUDY}/jobs/{record.job_id}/attempt-1/val_correct.bin"
        backend.artifacts.put_bytes(artifacts["val_correct"], correct)
    metrics = {"val_accuracy": accuracy, "val_loss": 1 - accuracy} | ({"val_examples": examples} if examples else {})
    return finish(backend, record, metrics=metrics, artifacts=artifacts)


def evaluated(backend: Backend, parent: JobRecord, test_mask: np.ndarray, as_csv: bool = False) -> JobRecord:
    """A succeeded evaluation of `parent`: a test_correct file, or (an older evaluation) only its predictions."""
    spec = evaluate_spec(parent)
    record = JobRecord(study_id=STUDY, job_id=job_id_for(STUDY, spec), spec=spec, created_at=time.time())
    backend.store.create_jobs([record])
    prefix = f"studies/{STUDY}/jobs/{record.job_id}"
    if as_csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["file", "true_class", "predicted_class", "probability"])
        for path, right in zip(TEST_FILES, test_mask):
            true = path.split("/")[1]
            writer.writerow([path, true, true if right else "other", "0.9"])
        artifacts = {"predictions_csv": f"{prefix}/predictions.csv"}
        backend.artifacts.put_bytes(artifacts["predictions_csv"], out.getvalue().encode())
    else:
        artifacts = {"test_correct": f"{prefix}/test_correct.bin"}
        backend.artifacts.put_bytes(artifacts["test_correct"], encode_correct(test_mask, examples_id(TEST_FILES)))
    metrics = {"test_accuracy": float(test_mask.mean()), "test_loss": 0.5, "test_examples": TEST_N}
    return finish(backend, record, metrics=metrics, artifacts=artifacts, checkpoint=parent.checkpoint)


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, JobRecord]:
    home = tmp_path / "home"
    monkeypatch.setenv("SPOTSWEEP_HOME", str(home))
    monkeypatch.setenv("SPOTSWEEP_BACKEND", "local")
    backend = open_local(BackendConfig(home=home))
    backend.store.put_study(study_record(STUDY))
    jobs = {
        "A": trained(backend, 0.1, 0.9, correct=encode_correct(A_MASK, VAL_IDS)),
        "B": trained(backend, 0.2, 0.88, correct=encode_correct(B_MASK, VAL_IDS)),
        "C": trained(backend, 0.3, 0.7, correct=encode_correct(C_MASK, VAL_IDS)),
        "D": trained(backend, 0.4, 0.85),
        "E": trained(backend, 0.5, 0.8, examples=150, correct=encode_correct(mask(range(120), 150), OTHER_IDS)),
        **{f"R{seed}": trained(backend, 0.6, value, seed=seed) for seed, value in enumerate((0.78, 0.80, 0.88))},
    }
    jobs["evalA"] = evaluated(backend, jobs["A"], mask(range(75), TEST_N))  # 0.75: far below A's validation interval
    jobs["evalB"] = evaluated(backend, jobs["B"], mask(range(5, 83), TEST_N), as_csv=True)  # 0.78, predictions only
    return jobs


def home_backend() -> Backend:
    """The backend the commands use (SPOTSWEEP_HOME, set by the fixture)."""
    return open_local(BackendConfig(home=Path(os.environ["SPOTSWEEP_HOME"])))


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def refused(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.output
    return result.stderr


def test_leaderboard_json_agrees_with_the_per_example_files(study):
    doc = LeaderboardDocument.model_validate_json(invoke("leaderboard", STUDY, "--format", "json"))
    rows = {row.job_id: row for row in doc.rows}
    a, b, c, d, e = (rows[study[name].job_id] for name in "ABCDE")
    assert [row.job_id for row in doc.rows[:5]] == [a.job_id, b.job_id, d.job_id, study["R2"].job_id, e.job_id]

    backend = home_backend()
    for row in (a, b, c, e):  # each interval, recomputed from the job's own file
        results = decode_correct(backend.artifacts.get_bytes(backend.store.find_job(row.job_id).artifacts["val_correct"]))
        low, high = wilson_by_hand(int(results.correct.sum()), results.correct.size)
        assert row.val_examples == results.correct.size
        assert (row.val_accuracy_ci_low, row.val_accuracy_ci_high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert (a.val_accuracy_ci_low, a.val_accuracy_ci_high) == (pytest.approx(0.8506, abs=5e-5), pytest.approx(0.9343, abs=5e-5))
    assert d.val_examples == VAL_N and d.val_accuracy_ci_low == pytest.approx(wilson_by_hand(170, VAL_N)[0], abs=1e-12)

    # ties with #1: B tied, C worse (Holm over the 2 comparable rows), D (no file) and E (other examples) unknown
    assert (a.tied_with_best, b.tied_with_best, c.tied_with_best) == (True, True, False)
    assert d.tied_with_best is None and e.tied_with_best is None and a.tie_p_value is None
    assert b.tie_p_value == pytest.approx(P_B, abs=1e-12)  # max(2 * P_C, 1 * P_B)
    assert c.tie_p_value == pytest.approx(2 * P_C, rel=1e-9)

    # the test side: A's evaluation (a test_correct file), B's (its predictions), gap and warning
    assert (a.test_accuracy, a.test_examples, a.evaluation_job_id) == (0.75, TEST_N, study["evalA"].job_id)
    low, high = wilson_by_hand(75, TEST_N)
    assert (a.test_accuracy_ci_low, a.test_accuracy_ci_high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert a.val_test_gap == pytest.approx(0.15) and a.gap_warning is True  # 0.75 < 0.8506
    assert b.val_test_gap == pytest.approx(0.10) and b.gap_warning is True  # 0.78 < B's low end 0.8277
    assert c.gap_warning is None and c.test_accuracy is None
    assert doc.gap_warning and doc.gap_warning.startswith("warning: 2 of 2 evaluated models") and a.job_id in doc.gap_warning


def test_repeats_are_ranked_and_shown_by_their_mean_with_a_t_interval(study):
    doc = LeaderboardDocument.model_validate_json(invoke("leaderboard", STUDY, "--format", "json"))
    (r,) = [row for row in doc.rows if row.repeats == 3]
    assert r.job_id == study["R2"].job_id and r.val_accuracy == 0.88  # the best seed stands for it ...
    assert r.mean == pytest.approx(0.82) and r.val_accuracy_mean == pytest.approx(0.82)  # ... ranked by the mean
    half = T_95_2DF * math.sqrt((0.04**2 + 0.02**2 + 0.06**2) / 2) / math.sqrt(3)
    assert r.val_accuracy_mean_ci_low == pytest.approx(0.82 - half, abs=1e-9)
    assert r.val_accuracy_mean_ci_high == pytest.approx(0.82 + half, abs=1e-9)
    assert half == pytest.approx(0.13145, abs=5e-5)
    single = next(row for row in doc.rows if row.job_id == study["A"].job_id)
    assert single.val_accuracy_mean == 0.9 and single.val_accuracy_mean_ci_low is None


def test_the_table_marks_ties_shows_intervals_and_warns_about_the_gap(study):
    output = invoke("leaderboard", STUDY)
    lines = output.splitlines()
    header = next(line for line in lines if "┃" in line)
    assert "≈" in header and "95%" in header and "test 95%" in header and "gap" in header and "std" not in header
    row = {name: next(line for line in lines if study[name].job_id in line) for name in ("A", "B", "C", "D", "R2")}
    assert "≈" in row["B"] and "≈" not in row["C"] and "≈" not in row["A"] and "?" in row["D"]
    # half-widths: A's val (0.9343 - 0.8506) / 2, its test (0.8245 - 0.6570) / 2; R's t-interval 4.303 * s / sqrt(3)
    assert "0.9000" in row["A"] and "±0.042" in row["A"] and "±0.084" in row["A"]
    assert "0.8200" in row["R2"] and "0.8800" not in row["R2"]  # the mean, as sorted, not the best seed
    assert "±0.131" in row["R2"]  # and its t-interval's
    assert max(len(line) for line in lines if "│" in line) <= 160
    notes = lines[next(i for i, line in enumerate(lines) if line.startswith("└")) + 1:]  # under the table
    assert any("Holm over 2 comparisons" in line for line in notes), notes
    assert any(line.startswith("warning: 2 of 2 evaluated models") for line in notes), notes
    assert all(len(line) <= 120 for line in notes), notes
    evaluations = [line for line in lines if study["evalA"].job_id in line or study["evalB"].job_id in line]
    assert len(evaluations) == 2 and not any("?" in line or "≈" in line for line in evaluations)
    assert any("sorted by the mean val_accuracy" in line for line in notes), notes


def test_ties_are_computed_over_the_rows_shown(study):
    doc = LeaderboardDocument.model_validate_json(invoke("leaderboard", STUDY, "--top", "2", "--format", "json"))
    assert [row.job_id for row in doc.rows] == [study["A"].job_id, study["B"].job_id]
    assert doc.rows[1].tied_with_best is True and doc.rows[1].tie_p_value == pytest.approx(P_B, abs=1e-12)
    by_cost = LeaderboardDocument.model_validate_json(invoke("leaderboard", STUDY, "--by", "cost_usd", "--format", "json"))
    assert all(row.tied_with_best is None for row in by_cost.rows)  # a McNemar test is about accuracy only


def test_compare_agrees_with_a_recomputation_from_the_two_files(study):
    a, c = study["A"].job_id, study["C"].job_id
    doc = CompareDocument.model_validate_json(invoke("compare", a, c, "--format", "json"))
    backend = home_backend()
    masks = [decode_correct(backend.artifacts.get_bytes(study[n].artifacts["val_correct"])).correct for n in "AC"]
    assert (doc.n, doc.a_only, doc.b_only) == (VAL_N, int((masks[0] & ~masks[1]).sum()), int((masks[1] & ~masks[0]).sum()))
    assert (doc.n, doc.a_only, doc.b_only, doc.disagreements) == (200, 45, 5, 50)
    assert doc.p_value == pytest.approx(P_C, rel=1e-9) and (doc.a_accuracy, doc.b_accuracy) == (0.9, 0.7)
    assert invoke("compare", a, study["B"].job_id).strip() == (
        f"job {a} is better than job {study['B'].job_id} on 6 of 8 disagreements, p = 0.289")
    assert invoke("compare", c, a).strip() == f"job {a} is better than job {c} on 45 of 50 disagreements, p < 0.001"


def test_compare_on_the_test_split_reads_the_evaluations(study):
    a, b = study["A"].job_id, study["B"].job_id
    doc = CompareDocument.model_validate_json(invoke("compare", a, b, "--split", "test", "--format", "json"))
    # A: right on 0..74 (test_correct); B: right on 5..82 (its predictions CSV, row by row)
    assert (doc.a_source_job_id, doc.b_source_job_id) == (study["evalA"].job_id, study["evalB"].job_id)
    assert (doc.n, doc.a_only, doc.b_only, doc.a_accuracy, doc.b_accuracy) == (100, 5, 8, 0.75, 0.78)
    assert doc.p_value == pytest.approx(2 * sum(math.comb(13, k) for k in range(6)) / 2**13)  # 5 of 13
    same = CompareDocument.model_validate_json(invoke("compare", study["evalA"].job_id, b, "--split", "test", "--format", "json"))
    assert (same.a_only, same.b_only) == (5, 8)  # an evaluation job names its own results
    assert "each win" not in invoke("compare", a, b, "--split", "test")


def test_compare_refuses_in_one_line(study):
    a = study["A"].job_id
    assert "unknown job 'nosuchjob'" in refused("compare", a, "nosuchjob")
    assert "no per-example validation results" in refused("compare", a, study["D"].job_id)
    assert "different val examples" in refused("compare", a, study["E"].job_id)
    assert "has not been evaluated on the test split" in refused("compare", a, study["C"].job_id, "--split", "test")
    assert "unknown split 'train'" in refused("compare", a, study["B"].job_id, "--split", "train")
    backend = home_backend()
    backend.artifacts.delete(study["B"].artifacts["val_correct"])
    assert study["B"].job_id in refused("compare", a, study["B"].job_id)  # the record names a file that is gone


def test_status_counts_the_models_that_have_seen_the_test_split(study):
    doc = json.loads(invoke("status", STUDY, "--format", "json"))
    assert doc["models_seen_test"] == 2 and "models_seen_test" in StatusDocument.model_fields
    assert "test split: seen by 2 models of this study" in invoke("status", STUDY)


def test_the_report_chooses_by_validation_and_draws_the_intervals(study, tmp_path):
    # B scored higher on test (0.78) than A (0.75): choosing by test would pick B and overfit the test split
    report = build_report(home_backend(), STUDY, tmp_path / "report")
    page = report.html.read_text()
    assert f"best evaluated model, chosen by validation: job {study['evalA'].job_id} (model of job {study['A'].job_id}" in page
    assert "test accuracy 0.7500 (95% interval [0.657, 0.825])" in page
    assert "the test split has been seen by 2 models of this study" in page
    assert (f"job {study['A'].job_id} is better than job {study['B'].job_id} on 6 of 8 disagreements, p = 0.289") in page

    drawn = report.data["accuracy_intervals"]  # the top 5 trained configurations, as ranked
    names = ["A", "B", "D", "R2", "E"]
    assert list(drawn["job_id"]) == [study[name].job_id for name in names]
    assert list(drawn["val"]) == pytest.approx([0.9, 0.88, 0.85, 0.82, 0.8])
    assert drawn["val_low"][0] == pytest.approx(wilson_by_hand(180, VAL_N)[0])
    assert drawn["val_high"][3] == pytest.approx(0.82 + T_95_2DF * math.sqrt(0.0028) / math.sqrt(3))  # R: its t-interval
    assert drawn["test"][0] == 0.75 and drawn["test_high"][1] == pytest.approx(wilson_by_hand(78, TEST_N)[1])
    assert drawn["test"][2:].isna().all() and drawn["label"][1].endswith("≈") and "(3 seeds)" in drawn["label"][3]
    assert (tmp_path / "report" / "accuracy_intervals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_counts_or_readable_files_the_numbers_are_null_not_guessed(tmp_path):
    backend = open_local(BackendConfig(home=tmp_path / "home"))
    backend.store.put_study(study_record(STUDY))
    best = trained(backend, 0.1, 0.9, correct=encode_correct(A_MASK, VAL_IDS))
    broken = trained(backend, 0.2, 0.88, correct=b"not a correctness file")
    gone = trained(backend, 0.3, 0.87, correct=encode_correct(B_MASK, VAL_IDS))
    backend.artifacts.delete(gone.artifacts["val_correct"])
    old = trained(backend, 0.4, 0.86, examples=None)  # written before counts were kept
    frame = leaderboard(backend.store.list_jobs(STUDY), artifacts=backend.artifacts)
    rows = frame.set_index("job_id")
    assert rows.loc[best.job_id, "tied_with_best"] is True
    assert all(rows.loc[j.job_id, "tied_with_best"] is None for j in (broken, gone, old))
    assert pd.isna(rows.loc[old.job_id, "val_accuracy_ci_low"]) and pd.isna(rows.loc[old.job_id, "val_examples"])
    assert table_notes(frame)[-1].startswith("sorted by val_accuracy")  # no comparison made: no tie note
    assert list(for_table(frame)["≈"]) == ["", "?", "?", "?"]
    assert "95%" in for_table(frame).columns and "test 95%" not in for_table(frame).columns
