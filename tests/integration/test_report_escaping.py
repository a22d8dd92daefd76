"""report.html is opened in a browser on a laptop: every string that comes from a record (a study
name, a job's error) must arrive as text, never as markup (threat model: anyone with table write)."""

from __future__ import annotations

from pathlib import Path

from shared.backends.factory import open_local
from shared.config import BackendConfig
from submitter import service
from submitter.report import HTML_NAME, build_report
from tests.contract.raw_rows import put_study_row
from tests.integration.test_report import PRICE, curve, run_through_store, study_spec

PAYLOAD = '<script>alert(1)</script><img src=x onerror=alert(2)>'


def test_record_strings_are_escaped_in_report_html(tmp_path: Path, tiny_dataset: Path) -> None:
    backend = open_local(BackendConfig(home=tmp_path / "home"))
    spec = study_spec(tiny_dataset)  # a study file refuses such a name; a table writer need not
    service.submit_study(backend, spec, PRICE)
    for index, record in enumerate(backend.store.list_jobs(spec.study_id)):
        run_through_store(backend, record, curve(record, 2), error=f"RuntimeError: {PAYLOAD}" if index == 0 else None)
    study = backend.store.get_study(spec.study_id)
    put_study_row(backend.store, spec.study_id, {**study.model_dump(mode="json"), "name": f"study {PAYLOAD}"})

    build_report(backend, spec.study_id, tmp_path / "out")
    html = (tmp_path / "out" / HTML_NAME).read_text()

    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the name is shown, as text
    assert "<script>" not in html and "<img src=x" not in html
