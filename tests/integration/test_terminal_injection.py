"""Terminal injection (issue 15, item 6), the proof of concept made small: strings from records,
manifests and folders carrying Rich markup and escape sequences print as text, without their
control characters, in every command, and never as a hyperlink or a screen clear.

A record can no longer carry an unknown architecture (records are validated when read back), so
the architecture and class-name cases go through the rendering functions every command uses.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.jobs import EpochRecord, JobRecord
from shared.status import JobStatus
from submitter import service
from submitter.cli import app
from submitter.leaderboard import for_table, leaderboard, matrix
from submitter.render import clean, data_console, emit
from submitter.watch import render_status, watch
from tests.factories import job_record, study_record

# markup that would become a link or raise MarkupError, an OSC-8 hyperlink, a screen clear, a C1 CSI
EVIL = "x[/bold][link=http://e.vil]y[/link]\x1b]8;;http://e.vil\x07z\x1b]8;;\x07\x1b[2J\x9b1m"
SHOWN = "x[/bold][link=http://e.vil]y[/link]]8;;http://e.vilz]8;;[2J1m"  # EVIL as text, controls removed
BIN = Path(sys.executable).parent


def assert_inert(output: str) -> None:
    """No escape sequence that came from data: no OSC (links, titles), no screen clear, no C1, no NUL."""
    assert "\x1b]" not in output and "\x1b[2J" not in output and "\x9b" not in output and "\x00" not in output


def assert_plain(output: str) -> None:
    """Output for a pipe: not a single escape character."""
    assert "\x1b" not in output
    assert_inert(output)


@pytest.fixture
def hostile(tmp_path, monkeypatch) -> tuple[Path, str, list[JobRecord]]:
    """A study whose name, failed job's error, running job's worker and epoch metric name are EVIL."""
    home = tmp_path / "home"
    monkeypatch.setenv("SPOTSWEEP_HOME", str(home))
    monkeypatch.setenv("SPOTSWEEP_BACKEND", "local")
    backend = open_local(BackendConfig(home=home))
    backend.store.put_study(study_record("hostile").model_copy(update={"name": f"name {EVIL}"}))
    failed, running = job_record("hostile", 0.1), job_record("hostile", 0.01)
    backend.store.create_jobs([failed, running])
    now = time.time()
    claimed = backend.store.claim("hostile", failed.job_id, "w-1", 60, now)
    backend.store.put_epoch(EpochRecord(study_id="hostile", job_id=failed.job_id, epoch=1, attempt=claimed.attempt,
                                        metrics={"val_accuracy": 0.5, f"metric {EVIL}": 1.0}, seconds=2.0))
    backend.store.finish("hostile", failed.job_id, claimed.attempt, JobStatus.FAILED,
                         {"error": f"PermanentError: {EVIL}", "metrics": {"val_accuracy": 0.5}})
    backend.store.claim("hostile", running.job_id, f"worker {EVIL}", 600, now)
    return home, "hostile", [failed, running]


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_commands_print_record_strings_as_text(hostile):
    _, study_id, (failed, _) = hostile
    studies, status, show = invoke("studies"), invoke("status"), invoke("show", failed.job_id)
    for output in (studies, status, show, invoke("leaderboard"), invoke("leaderboard", "--matrix", "architecture", "optimizer")):
        assert_plain(output)
    assert f"name {SHOWN}" in studies
    assert f"name {SHOWN}" in status and f"worker {SHOWN}" in status
    assert f"PermanentError: {SHOWN}" in show and f"metric {SHOWN}" in show  # the record and the epochs table


def test_a_colour_terminal_gets_styles_but_no_link_and_no_screen_clear(hostile):
    home, _, (failed, _) = hostile
    env = {**os.environ, "SPOTSWEEP_HOME": str(home), "SPOTSWEEP_BACKEND": "local", "FORCE_COLOR": "1"}
    env.pop("NO_COLOR", None)
    for command in (["status"], ["studies"], ["show", failed.job_id]):
        result = subprocess.run([str(BIN / "submit"), *command], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "\x1b[" in result.stdout, command  # styles are on: the terminal case of the proof of concept
        assert_inert(result.stdout)
        assert SHOWN in result.stdout, command


def test_other_formats_keep_the_data_without_raw_escapes(hostile):
    _, _, (failed, _) = hostile
    document = json.loads(invoke("show", failed.job_id, "--format", "json"))
    assert document["job"]["error"] == f"PermanentError: {EVIL}"  # json is faithful: escaped, not raw
    assert f"metric {EVIL}" in document["rows"][0]  # an epoch's metric names
    for fmt in ("json", "csv", "markdown"):
        output = invoke("show", failed.job_id, "--format", fmt)
        assert_plain(output)
        if fmt != "json":
            assert f"metric {SHOWN}" in output  # csv and markdown: the data without control characters


def test_leaderboard_and_matrix_render_a_crafted_architecture_as_text(hostile, capsys):
    """What `submit leaderboard` (and `--matrix`) prints in each format, for a record whose
    architecture slipped past validation."""
    home, study_id, (failed, _) = hostile
    record = open_local(BackendConfig(home=home)).store.get_job(study_id, failed.job_id)
    spec = record.spec.model_copy(update={"model": record.spec.model.model_copy(update={"architecture": EVIL})})
    crafted = record.model_copy(update={"spec": spec})
    board, grid = leaderboard([crafted]), matrix([crafted], "architecture", "optimizer")
    for frame in (for_table(board), grid):
        text = rendered(lambda console: emit(console, frame, "table", title=f"by {EVIL}"))  # noqa: B023
        assert_inert(text)
        assert text.count(SHOWN) == 2, text  # the title and the cell
    for fmt in ("markdown", "csv"):
        for frame in (board, grid):
            emit(data_console(), frame, fmt)
            text = capsys.readouterr().out
            assert_plain(text)
            assert SHOWN in text, (fmt, text)


def test_class_names_from_a_manifest_render_as_text():
    """`submit predict` prints the classes of a job's manifest through the same table."""
    import pandas as pd

    rows = pd.DataFrame([{"image": f"a{EVIL}.png", "rank": 1, "class": EVIL, "probability": 0.9}])
    text = rendered(lambda console: emit(console, rows, "table", title="job j"))
    assert_inert(text)
    assert text.count(SHOWN) == 2


def test_the_live_status_renders_record_strings_as_text(hostile):
    home, study_id, _ = hostile
    status = service.study_status(open_local(BackendConfig(home=home)), study_id, 120)
    status.running[0]["architecture"] = EVIL  # the one field validation now keeps out of records
    status.finished = True  # one frame, then the loop ends
    text = rendered(lambda console: watch(lambda: status, console, 0.1), width=400)  # wide: no cell wraps
    assert_inert(text)
    assert f"worker {SHOWN}" in text and f"│ {SHOWN} │" in text
    text = rendered(lambda console: console.print(render_status(status)))
    assert f"name {SHOWN}" in text


def test_an_error_that_quotes_a_folder_name_is_one_clean_line(tmp_path):
    """`dataset prepare` names the folder it refuses: the name is data too."""
    source = tmp_path / "src"
    (source / "a").mkdir(parents=True)
    for index in range(4):
        Image.new("RGB", (8, 8), (index * 40, 0, 0)).save(source / "a" / f"{index}.png")
    (source / f"b{EVIL.replace('/', '-')}").mkdir()  # a folder name can hold ESC, not /
    result = CliRunner().invoke(app, ["dataset", "prepare", str(source), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert_plain(result.stderr)
    assert "[link=http:-" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_clean_keeps_text_and_drops_controls():
    assert clean(EVIL) == SHOWN
    assert clean("a\tb\nc\r\x85d\x00\x7f") == "a b cd"
    assert clean("a\tb\nc", multiline=True) == "a\tb\nc"
    assert clean("Blüte ✿ 花") == "Blüte ✿ 花"  # printable non-ASCII class names stay


def rendered(draw, width: int = 200) -> str:
    """What `draw(console)` writes to a colour terminal (styles on, as for a person)."""
    buffer = io.StringIO()
    draw(data_console(file=buffer, force_terminal=True, color_system="truecolor", width=width))
    return buffer.getvalue()
