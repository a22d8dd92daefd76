"""`submit status --watch`: the live view rendered from a real StudyStatus, the loop's exits, and
the terminal conventions (progress bars only at a terminal, NO_COLOR)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from shared.jobs import EpochRecord
from shared.status import JobStatus
from submitter import service
from submitter.cli import app
from submitter.watch import EXIT_INTERRUPTED, duration, progress_bar, render_status, watch
from tests.integration.test_report import build_study, curve

BIN = Path(sys.executable).parent


def rendered(status: service.StudyStatus) -> str:
    console = Console(record=True, width=140, force_terminal=False, color_system=None)
    console.print(render_status(status))
    return console.export_text()


def test_render_status_of_a_study_in_progress(tmp_path, tiny_dataset):
    backend, study_id = build_study(tmp_path / "home", tiny_dataset, evaluate=False, leave_queued=3)
    queued = backend.store.list_jobs(study_id, JobStatus.QUEUED)
    now = time.time()
    # one healthy running job, 2 epochs in; one whose worker went silent long ago (stale)
    healthy = backend.store.claim(study_id, queued[0].job_id, "worker-a", 600, now)
    for epoch, values in enumerate(curve(healthy, 4)[:2], start=1):
        backend.store.put_epoch(EpochRecord(study_id=study_id, job_id=healthy.job_id, epoch=epoch, attempt=healthy.attempt, metrics=values))
    backend.store.update(study_id, healthy.job_id, healthy.attempt,
                         {"epochs_run": 2, "metrics": curve(healthy, 4)[1], "heartbeat_at": now - 5})
    stale = backend.store.claim(study_id, queued[1].job_id, "worker-b", 1, now - 900)
    backend.store.update(study_id, stale.job_id, stale.attempt, {"heartbeat_at": now - 900})

    status = service.study_status(backend, study_id, stale_after_s=120, now=now)
    text = rendered(status)
    assert f"study {study_id}" in text
    assert "queued 1" in text and "running 2" in text and "succeeded 4" in text and "failed 1" in text
    assert "5/8 finished (62%)" in text
    assert "2/4" in text and f"{curve(healthy, 4)[1]['val_accuracy']:.4f}" in text  # epoch k/N, last val_accuracy
    assert "worker-a" in text and "5s" in text
    assert "STALE" in text and "1 stale lease" in text
    assert f"spend ${status.cost_usd:.4f}" in text and "DLQ 0" in text and "ETA " in text
    assert text.count("STALE") == 1


def test_render_status_of_a_finished_study(tmp_path, tiny_dataset):
    backend, study_id = build_study(tmp_path / "home", tiny_dataset, evaluate=False)
    text = rendered(service.study_status(backend, study_id, 120))
    assert "finished" in text and "8/8 finished (100%)" in text and "ETA done" in text
    assert "running" not in text.split("finished (100%)")[1].split("\n", 2)[-1]


def test_watch_loops_until_finished_and_exits_130_on_ctrl_c():
    statuses = [
        service.StudyStatus("s", "s", {"QUEUED": 1, "RUNNING": 0, "SUCCEEDED": 1, "FAILED": 0, "CANCELLED": 0}, 2, 1.0, 0.0,
                            {"visible": 1, "in_flight": 0, "dead_lettered": 0}),
        service.StudyStatus("s", "s", {"QUEUED": 0, "RUNNING": 0, "SUCCEEDED": 2, "FAILED": 0, "CANCELLED": 0}, 2, 2.0, 0.0,
                            {"visible": 0, "in_flight": 0, "dead_lettered": 0}, finished=True),
    ]
    sleeps: list[float] = []
    console = Console(record=True, width=100, force_terminal=False)
    assert watch(iter(statuses).__next__, console, 0.5, sleep=sleeps.append) == 0
    assert sleeps == [0.5] and "2/2 finished" in console.export_text()

    def interrupted() -> service.StudyStatus:
        raise KeyboardInterrupt

    assert watch(interrupted, Console(file=open(os.devnull, "w")), 0.1) == EXIT_INTERRUPTED == 130


def test_status_watch_on_a_finished_study_exits_0_at_once(tmp_path, tiny_dataset, monkeypatch):
    home = tmp_path / "home"
    build_study(home, tiny_dataset, evaluate=False)
    monkeypatch.setenv("SPOTSWEEP_HOME", str(home))
    monkeypatch.setenv("SPOTSWEEP_BACKEND", "local")
    started = time.monotonic()
    result = CliRunner().invoke(app, ["status", "--watch", "--interval", "30"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 10
    assert "8/8 finished" in result.stdout
    bad = CliRunner().invoke(app, ["status", "--watch", "--format", "json"])
    assert bad.exit_code == 2 and "--watch" in bad.stderr


def test_progress_bar_is_off_when_quiet_or_piped():
    with progress_bar(Console(), "x", 10, enabled=False) as callback:
        assert callback is None
    console = Console(record=True, force_terminal=True, width=80)
    with progress_bar(console, "submitting", 1000, enabled=True) as callback:
        callback(500)
        callback(500)
        callback(3, 4)  # the (done, total) form too
    assert duration(3725) == "1h 02m" and duration(65) == "1m 05s" and duration(None) == "unknown"


def test_no_color_is_respected(tmp_path, tiny_dataset):
    build_study(tmp_path / "home", tiny_dataset, evaluate=False, leave_queued=1)
    env = {**os.environ, "SPOTSWEEP_HOME": str(tmp_path / "home"), "SPOTSWEEP_BACKEND": "local", "FORCE_COLOR": "1"}
    env.pop("NO_COLOR", None)
    coloured = subprocess.run([str(BIN / "submit"), "status"], env=env, capture_output=True, text=True, timeout=60)
    plain = subprocess.run([str(BIN / "submit"), "status"], env={**env, "NO_COLOR": "1"}, capture_output=True, text=True, timeout=60)
    assert coloured.returncode == plain.returncode == 0, coloured.stderr + plain.stderr
    assert "\x1b[3" in coloured.stdout  # a foreground colour, when forced
    assert "\x1b[3" not in plain.stdout and "\x1b[9" not in plain.stdout
