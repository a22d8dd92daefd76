"""Tables a person reads: one number format per column in the terminal (`submit leaderboard`,
`studies`, `show`), and report.html's leaderboard written like the terminal's."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.jobs import EpochRecord
from shared.status import JobStatus
from submitter.cli import app
from submitter.leaderboard import for_table, leaderboard
from submitter.render import column_format
from submitter.report import build_report
from tests.factories import job_record, study_record
from tests.integration.test_report import build_study

NUMBER = re.compile(r"^\$?-?[\d,]+(\.(\d+))?$")
# Values of very different magnitudes in one column: the case that printed 4.9900 above 64.1.
JOBS = [  # learning rate, val_accuracy, train seconds, cost in USD, seconds of one epoch
    (0.1, 0.5, 3.2, 4.99, 0.4),
    (0.01, 0.91234, 12345.6, 64.1, 123.0),
    (0.001, 0.7, 45.0, 0.0012, 2.25),
]


@pytest.fixture
def magnitudes(tmp_path, monkeypatch) -> tuple[str, list[str]]:
    """A study of three finished jobs through the store's own protocol; returns (study, job ids)."""
    home = tmp_path / "home"
    monkeypatch.setenv("SPOTSWEEP_HOME", str(home))
    monkeypatch.setenv("SPOTSWEEP_BACKEND", "local")
    backend = open_local(BackendConfig(home=home))
    backend.store.put_study(study_record("magnitudes"))
    records = [job_record("magnitudes", learning_rate=lr) for lr, *_ in JOBS]
    backend.store.create_jobs(records)
    for record, (_, accuracy, seconds, cost, epoch_seconds) in zip(records, JOBS):
        claimed = backend.store.claim("magnitudes", record.job_id, "w-1", 60, time.time())
        for epoch in (1, 2):
            backend.store.put_epoch(EpochRecord(study_id="magnitudes", job_id=record.job_id, epoch=epoch, attempt=claimed.attempt,
                                                metrics={"val_accuracy": accuracy / epoch, "loss": 10.0 / epoch}, seconds=epoch_seconds * epoch))
        backend.store.finish("magnitudes", record.job_id, claimed.attempt, JobStatus.SUCCEEDED, {
            "metrics": {"val_accuracy": accuracy}, "train_seconds": seconds, "cost_usd": cost, "epochs_run": 2, "best_epoch": 2})
    return "magnitudes", [r.job_id for r in records]


def table_columns(output: str) -> dict[str, list[str]]:
    """The cells of a rich table printed as text, by header."""
    lines = output.splitlines()
    headers = [h.strip() for h in next(line for line in lines if "┃" in line).strip().strip("┃").split("┃")]
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in lines if line.lstrip().startswith("│")]
    assert rows and all(len(row) == len(headers) for row in rows), output
    return {header: [row[i] for row in rows] for i, header in enumerate(headers)}


def decimals_by_column(columns: dict[str, list[str]]) -> dict[str, set[int]]:
    """For every column whose filled cells are all numbers: the set of decimal counts seen."""
    found = {}
    for header, cells in columns.items():
        filled = [NUMBER.match(c) for c in cells if c]
        if filled and all(filled):
            found[header] = {len(m.group(2) or "") for m in filled}
    return found


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_every_numeric_column_of_the_leaderboard_has_one_format(magnitudes):
    columns = table_columns(invoke("leaderboard"))
    decimals = decimals_by_column(columns)
    assert {"val_acc", "seconds", "cost"} <= set(decimals), columns
    assert all(len(seen) == 1 for seen in decimals.values()), decimals
    assert sorted(columns["cost"]) == ["$0.0012", "$4.9900", "$64.1000"]  # the cheapest keeps 2 significant digits
    assert sorted(columns["seconds"]) == ["12,345.6", "3.2", "45.0"]
    assert set(columns["val_acc"]) == {"0.5000", "0.9123", "0.7000"}
    assert columns["params"] == ["learning_rate=0.01", "learning_rate=0.001", "learning_rate=0.1"]  # k=v, not JSON


def test_studies_show_and_matrix_keep_one_format_per_column(magnitudes):
    study_id, job_ids = magnitudes
    studies = decimals_by_column(table_columns(invoke("studies")))
    assert all(len(seen) == 1 for seen in studies.values()) and studies["cost_usd"] == {2}, studies
    epochs = table_columns(invoke("show", job_ids[1]))
    assert epochs["seconds"] == ["123.0", "246.0"] and epochs["loss"] == ["10.0000", "5.0000"], epochs
    assert all(len(seen) == 1 for seen in decimals_by_column(epochs).values())
    grid = table_columns(invoke("leaderboard", "--matrix", "architecture", "optimizer", "--by", "cost_usd"))
    assert grid["sgd"] == ["$0.0012"]  # the matrix holds the metric: it is written as that metric


def test_column_formats_are_decided_per_column():
    def cells(name: str, values: list) -> list[str]:
        write, numeric = column_format(name, pd.Series(values))
        assert numeric
        return [write(v) for v in values]

    assert cells("total_params", [1234567, 987, None]) == ["1,234,567", "987", ""]
    assert cells("best_epoch", [3.0, float("nan"), 12.0]) == ["3", "", "12"]  # NaN made them floats: still counts
    assert cells("data_fraction", [1.0, 0.25, 0.5]) == ["1.00", "0.25", "0.50"]
    assert cells("cost_usd", [0.0, 12.5]) == ["$0.00", "$12.50"]
    assert cells("heartbeat_age_s", [4, 3600.25]) == ["4.0", "3,600.2"]
    assert column_format("stale", pd.Series([True, False]))[1] is False  # booleans are words, not numbers


class _BoardParser(HTMLParser):
    """Headers and cells of report.html's `table.board`."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[str] = []
        self.rows: list[list[str]] = []
        self._in_board = False
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table" and ("class", "board") in attrs:
            self._in_board = True
        elif self._in_board and tag == "tr":
            self.rows.append([])
        elif self._in_board and tag in ("th", "td"):
            self._cell = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_board = False
        elif tag in ("th", "td") and self._cell is not None:
            (self.headers if tag == "th" else self.rows[-1]).append(self._cell)
            self._cell = None


def test_report_leaderboard_reads_like_the_terminal(tmp_path: Path, tiny_dataset):
    backend, study_id = build_study(tmp_path / "home", tiny_dataset)
    page = build_report(backend, study_id, tmp_path / "out").html.read_text()
    board = _BoardParser()
    board.feed(page)
    terminal = for_table(leaderboard(backend.store.list_jobs(study_id)))
    assert board.headers == list(terminal.columns)
    assert {"#", "job", "arch", "opt", "params", "val_acc", "test_acc", "seconds", "cost"} <= set(board.headers)
    assert "optimizer_params" not in board.headers and "architecture" not in board.headers
    rows = [row for row in board.rows if row]
    params = {row[board.headers.index("params")] for row in rows}
    assert params == {"learning_rate=0.001", "learning_rate=0.01 momentum=0.9"}
    table = page[page.index('<table class="board">'):page.index("</table>")]
    assert "{" not in table and "&quot;" not in table  # no raw JSON in the leaderboard
    decimals = decimals_by_column({h: [row[i] for row in rows] for i, h in enumerate(board.headers)})
    assert all(len(seen) == 1 for seen in decimals.values()), decimals
