"""Rows written past the JobStore port, as a hostile, older or newer writer would write them.

Each function writes through the adapter's own backend client: a statement on the SQLite
database, a `PutItem` over HTTP to DynamoDB (moto's server). Nothing is mocked; the store then
reads back exactly what was stored.
"""

from __future__ import annotations

import json
from typing import Any

from shared.backends.aws_dynamo import META_SK, DynamoJobStore, epoch_sk, job_sk, serialize_item, study_pk
from shared.backends.local import SqliteJobStore
from shared.ports import JobStore


def put_job_row(store: JobStore, study_id: str, job_id: str, data: dict[str, Any]) -> None:
    """Store `data` as the job row keyed (`study_id`, `job_id`), replacing what is there."""
    if isinstance(store, SqliteJobStore):
        store.db.connection().execute(
            "INSERT OR REPLACE INTO jobs (study_id, job_id, status, doc) VALUES (?, ?, ?, ?)",
            (study_id, job_id, str(data.get("status", "QUEUED")), json.dumps(data)),
        )
    else:
        _put_item(store, {"pk": study_pk(study_id), "sk": job_sk(job_id), "item_type": "job", **data})


def put_study_row(store: JobStore, study_id: str, data: dict[str, Any]) -> None:
    """Store `data` as the study row of an existing study, replacing it."""
    if isinstance(store, SqliteJobStore):
        store.db.connection().execute("UPDATE studies SET doc = ? WHERE study_id = ?", (json.dumps(data), study_id))
    else:
        _put_item(store, {"pk": study_pk(study_id), "sk": META_SK, "item_type": "study", **data})


def put_epoch_row(store: JobStore, study_id: str, job_id: str, epoch: int, data: dict[str, Any]) -> None:
    """Store `data` as one epoch row of a job."""
    if isinstance(store, SqliteJobStore):
        store.db.connection().execute(
            "INSERT OR REPLACE INTO epochs (study_id, job_id, epoch, doc) VALUES (?, ?, ?, ?)",
            (study_id, job_id, epoch, json.dumps(data)),
        )
    else:
        item = {"pk": study_pk(study_id), "sk": epoch_sk(job_id, epoch), "item_type": "epoch", **data}
        item.pop("job_id", None)  # as the adapter stores epochs: job_id only on job items (the GSI)
        _put_item(store, item)


def _put_item(store: JobStore, item: dict[str, Any]) -> None:
    assert isinstance(store, DynamoJobStore), store
    store.client.put_item(TableName=store.table_name, Item=serialize_item(item))
