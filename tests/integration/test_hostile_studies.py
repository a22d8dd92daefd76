"""Issue 15 item 7 on every store (embedded SQLite, and DynamoDB on moto's server over HTTP): a
study row a teammate wrote can neither become "the most recent study" by a `created_at` in the
future nor name the report's directory with an id that climbs out (`report-{study_id}`). The
embedded side's CLI checks are in `test_store_keys.py`; here, what every adapter must hand the
submitter: the hostile row left out of the listing, the real study chosen."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from shared.jobs import StudyRecord
from shared.ports import Backend
from submitter import service
from tests.contract.raw_rows import put_study_row


@pytest.fixture(params=["local", pytest.param("aws", marks=pytest.mark.aws)])
def backend(request: pytest.FixtureRequest, local_backend: Backend) -> Iterator[Backend]:
    if request.param == "local":
        yield local_backend
        return
    from tests.aws_support import fresh_aws_backend

    yield from fresh_aws_backend(request, lease_s=3.0, max_receives=3)


def put_study(backend: Backend, study_id: str, created_at: float) -> None:
    backend.store.put_study(StudyRecord(study_id=study_id, name=study_id, created_at=created_at, spec={}))


def test_a_study_stamped_in_the_future_is_never_the_most_recent(backend):
    now = time.time()
    put_study(backend, "ours-1", now - 60)
    put_study(backend, "hijack-1", now + 10 * 24 * 3600)
    assert service.resolve_study_id(backend, None) == "ours-1"
    assert service.resolve_study_id(backend, "hijack") == "hijack-1"  # still reachable by name


def test_a_study_row_naming_a_path_is_left_out_and_never_chosen(backend, caplog):
    now = time.time()
    put_study(backend, "ours-1", now - 60)
    put_study(backend, "decoy-1", now - 30)
    hostile = StudyRecord(study_id="decoy-1", name="x", created_at=now, spec={}).model_dump(mode="json")
    put_study_row(backend.store, "decoy-1", {**hostile, "study_id": "x/../../target"})
    assert [s.study_id for s in backend.store.list_studies()] == ["ours-1"]
    assert "decoy-1" in caplog.text  # left out with a warning naming the row
    assert service.resolve_study_id(backend, None) == "ours-1"
