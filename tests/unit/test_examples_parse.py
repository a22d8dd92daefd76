"""Every example study under examples/ is one `submit study --dry-run` accepts as it is written:
over the demo's own dataset location (`data/flowers`, relative to where the demo runs), each
plans its jobs, and each search method shows what it plans (the trials, and for a search that
keeps a window the upper bound on jobs and epochs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from submitter.cli import app

EXAMPLES = Path(__file__).parents[2] / "examples"
STUDY_FILES = sorted(EXAMPLES.glob("*.json"))
METHOD_FILES = {"asha": "asha.json", "tpe": "tpe.json", "sobol": "sobol.json", "random": "random-distributions.json"}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a prepared dataset where the examples expect the demo's (`data/flowers`)."""
    from shared.datasets import prepare, synthesize

    root = tmp_path_factory.mktemp("demo")
    synthesize(root / "raw", classes=2, per_class=4, size=16, seed=1)
    prepare(root / "raw", root / "data" / "flowers", test_fraction=0.25, seed=1)
    return root


def dry_run(study_file: Path) -> dict:
    result = CliRunner().invoke(app, ["study", str(study_file), "--dry-run", "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, f"{study_file.name}: {result.output}"
    return json.loads(result.stdout)


def test_every_method_has_an_example() -> None:
    for method, name in METHOD_FILES.items():
        assert json.loads((EXAMPLES / name).read_text())["search"]["method"] == method, name


@pytest.mark.parametrize("study_file", STUDY_FILES, ids=[path.name for path in STUDY_FILES])
def test_example_parses_with_a_dry_run(study_file: Path, demo_dir: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(demo_dir)
    doc = dry_run(study_file)
    written = json.loads(study_file.read_text())
    assert doc["dry_run"] is True and doc["name"] == written["name"]
    assert doc["job_count"] == len(doc["jobs"]) > 0
    assert not home.exists()  # a dry run writes nothing
    method = written.get("search", {}).get("method", "grid")
    if method == "grid":
        return
    count = written["search"]["count"]
    assert {job["trial"] for job in doc["jobs"]} <= set(range(count))
    if doc["search"] is not None:  # a window (adaptive, a budget, a `parallel`): the bound is shown
        assert doc["search"]["method"] == method and doc["search"]["trials"] == count
        assert doc["search"]["jobs"] >= doc["job_count"] and doc["search"]["epochs"] >= 1
