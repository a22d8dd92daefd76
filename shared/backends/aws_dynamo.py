"""`DynamoJobStore`: the JobStore port on one DynamoDB table (single-table design).

Items (`pk`, `sk` are the table's keys; every item also has `item_type`):

| item          | pk                 | sk                               | notes                           |
|---------------|--------------------|----------------------------------|---------------------------------|
| study         | `STUDY#<study_id>` | `META`                           | the StudyRecord                 |
| job           | `STUDY#<study_id>` | `JOB#<job_id>`                   | the JobRecord; `job_id` feeds   |
|               |                    |                                  | the `job_index` GSI             |
| epoch         | `STUDY#<study_id>` | `EPOCH#<job_id>#<epoch:06d>`     | the EpochRecord (no `job_id`    |
|               |                    |                                  | attribute: kept out of the GSI) |
| study listing | `STUDIES`          | `<created_at:020.6f>#<study_id>` | study_id, created_at            |
| lock          | `LOCK#<name>`      | `META`                           | owner, expires_at               |

Records are stored as native attributes (numbers as `N`, written as `Decimal(str(x))` so that a
float round-trips exactly; nested models as maps; a top-level `None` is an absent attribute), so
every transition is an `UpdateItem` of the changed fields only, guarded by a server-side
`ConditionExpression`:

- claim: `#status = QUEUED OR (#status = RUNNING AND lease_expires_at <= :now)`, `attempt + 1`;
- fenced writes (renew, update, finish, put_epoch): `#status = RUNNING AND attempt = :attempt`;
  a failed condition is `LeaseLostError`, or `NotFoundError` when the item is absent (told
  apart with `ReturnValuesOnConditionCheckFailure=ALL_OLD`);
- put_epoch writes the epoch item in a transaction with a `ConditionCheck` of the fence.
- mark_enqueued: `#status IN (QUEUED, RUNNING) AND (no enqueued_at OR enqueued_at <= :now)`,
  100 `Update`s per transaction; the jobs whose condition failed are dropped and the rest retried;
- acquire_lock: a `PutItem` of the lock item, `attribute_not_exists(pk) OR expires_at <= :now`.

`create_jobs` streams its records in chunks of 100: one consistent `BatchGetItem` finds the ids
that exist, then one `TransactWriteItems` writes the missing ones, each `Put` conditioned on
`attribute_not_exists(pk)`. That is ceil(N/100) write calls (fewer than BatchWriteItem's
ceil(N/25)) and, unlike BatchWriteItem, it can never overwrite a record: if another submitter
created some of the ids in between (and a worker maybe claimed them already), the transaction is
cancelled naming those items, and it is retried without them. A transactional write costs two
write units per item instead of one; on-demand that is about $1.25 per million jobs.

Field changes are checked, and every record read back is validated against the key it came from,
by `shared.backends.checks`, as on every adapter: an identity or lease field in `changes` is
refused before any request is made; a corrupt item raises `CorruptRecordError` or, in a listing,
is left out with a warning.

Queries, never scans: `list_jobs` (begins_with `JOB#`, paginated, job id order), `epochs`,
`list_studies` (the `STUDIES` family, then `BatchGetItem` of the studies), `find_job` (the GSI).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from shared.backends.aws_errors import aws_errors, cancellation_is_retryable, error_code
from shared.backends.batching import backoff, bounded_batches
from shared.backends.checks import (
    HOLDER_FORBIDDEN,
    RESET_FORBIDDEN,
    UNFINISHED,
    check_lock,
    finish_status,
    job_changes,
    read_job,
    read_record,
    read_study,
    readable,
)
from shared.errors import LeaseLostError, NotFoundError, RetryableError
from shared.jobs import EpochRecord, JobRecord, StudyRecord
from shared.status import JobStatus

STUDIES_PK = "STUDIES"
META_SK = "META"
JOB_PREFIX = "JOB#"
EPOCH_PREFIX = "EPOCH#"
JOB_INDEX = "job_index"
TRANSACT_MAX_ITEMS = 100  # DynamoDB's limit per TransactWriteItems (25 before September 2022)
TRANSACT_MAX_BYTES = 3_500_000  # under the 4 MB a transaction may carry
BATCH_GET_MAX_KEYS = 100
ATTEMPTS = 8

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


# --- keys ---


def study_pk(study_id: str) -> str:
    return f"STUDY#{study_id}"


def job_sk(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


def epoch_sk(job_id: str, epoch: int) -> str:
    return f"{EPOCH_PREFIX}{job_id}#{epoch:06d}"


def lock_pk(name: str) -> str:
    return f"LOCK#{name}"


def listing_sk(created_at: float, study_id: str) -> str:
    return f"{created_at:020.6f}#{study_id}"


# --- values: Python (JSON mode) <-> DynamoDB ---

NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def to_dynamo(value: Any) -> Any:
    """JSON-mode Python -> what TypeSerializer takes: floats become exact Decimals.

    DynamoDB has no NaN or infinity: those are stored as the strings "NaN", "Infinity" and
    "-Infinity", which pydantic reads back into float fields.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str | int | Decimal):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return Decimal(str(value))
        return NON_FINITE[str(value)]
    if isinstance(value, dict):
        return {str(k): to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_dynamo(v) for v in value]
    raise TypeError(f"cannot store {type(value).__name__} in DynamoDB")


def from_dynamo(value: Any) -> Any:
    """What TypeDeserializer gives -> plain Python: integral numbers int, others float."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_dynamo(v) for v in value]
    if isinstance(value, set):
        return {from_dynamo(v) for v in value}
    return value


def serialize_item(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(to_dynamo(v)) for k, v in data.items() if v is not None}


def deserialize_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: from_dynamo(_deserializer.deserialize(v)) for k, v in item.items()}


def serialize_value(value: Any) -> dict[str, Any]:
    return _serializer.serialize(to_dynamo(value))


class _Expression:
    """Placeholders for an expression: `#n0`... for names, `:v0`... for values."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self._name_of: dict[str, str] = {}

    def n(self, name: str) -> str:
        if name not in self._name_of:
            placeholder = f"#n{len(self._name_of)}"
            self._name_of[name] = placeholder
            self.names[placeholder] = name
        return self._name_of[name]

    def v(self, value: Any) -> str:
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = serialize_value(value)
        return placeholder

    def update(self, sets: dict[str, Any], raw_sets: Sequence[str] = ()) -> str:
        """`SET` the non-None values (and `raw_sets`), `REMOVE` the None ones."""
        assignments = [f"{self.n(k)} = {self.v(v)}" for k, v in sets.items() if v is not None] + list(raw_sets)
        removals = [self.n(k) for k, v in sets.items() if v is None]
        parts = []
        if assignments:
            parts.append("SET " + ", ".join(assignments))
        if removals:
            parts.append("REMOVE " + ", ".join(removals))
        return " ".join(parts)

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.names:
            out["ExpressionAttributeNames"] = dict(self.names)
        if self.values:
            out["ExpressionAttributeValues"] = dict(self.values)
        return out


class _ConditionFailed(Exception):
    """A conditional write lost; `item` is the item as it was (None: there was none)."""

    def __init__(self, item: dict[str, Any] | None) -> None:
        super().__init__("condition failed")
        self.item = item


class DynamoJobStore:
    """A JobStore on DynamoDB (see `shared.ports.JobStore` for the contract)."""

    _kind = "DynamoDB table"

    def __init__(self, dynamodb_client: Any, table_name: str, page_size: int | None = None) -> None:
        self.client = dynamodb_client
        self.table_name = table_name
        self.page_size = page_size  # Query `Limit` (None: DynamoDB's 1 MB pages)
        self._name = table_name
        self._region = dynamodb_client.meta.region_name

    # --- studies ---

    @aws_errors
    def put_study(self, study: StudyRecord) -> bool:
        meta = {"pk": study_pk(study.study_id), "sk": META_SK, "item_type": "study", **study.model_dump(mode="json")}
        listing = {
            "pk": STUDIES_PK,
            "sk": listing_sk(study.created_at, study.study_id),
            "item_type": "study_listing",
            "study_id": study.study_id,
            "created_at": study.created_at,
        }
        items = [self._put_if_absent(meta), self._put_if_absent(listing)]
        failed = self._transact(items)
        return not failed

    @aws_errors
    def get_study(self, study_id: str) -> StudyRecord | None:
        item = self._get({"pk": study_pk(study_id), "sk": META_SK})
        return read_study(item, study_id) if item else None

    @aws_errors
    def list_studies(self) -> list[StudyRecord]:
        ids = [item["study_id"] for item in self._query(STUDIES_PK, "", projection=["study_id"])]
        keys = [{"pk": study_pk(i), "sk": META_SK} for i in dict.fromkeys(ids)]
        studies = readable(self._batch_get(keys), lambda item: read_study(item, study_id_of(item)))
        return sorted(studies, key=lambda s: (-s.created_at, s.study_id))

    @aws_errors
    def mark_stage(self, study_id: str, stage: str) -> bool:
        expr = _Expression()
        stages = expr.n("stages")
        try:
            self._update(
                {"pk": study_pk(study_id), "sk": META_SK},
                expr,
                update=f"SET {stages} = list_append(if_not_exists({stages}, {expr.v([])}), {expr.v([stage])})",
                condition=f"attribute_exists({expr.n('pk')}) AND NOT contains({stages}, {expr.v(stage)})",
            )
        except _ConditionFailed as failed:
            if failed.item is None:
                raise NotFoundError(f"unknown study {study_id}") from None
            return False
        return True

    # --- jobs: creation and reads ---

    @aws_errors
    def create_jobs(self, records: Iterable[JobRecord]) -> list[str]:
        created: list[str] = []
        for chunk in _chunks(records, BATCH_GET_MAX_KEYS):
            unique: dict[tuple[str, str], JobRecord] = {}
            for record in chunk:  # the first of duplicate ids wins
                unique.setdefault((study_pk(record.study_id), job_sk(record.job_id)), record)
            keys = [{"pk": pk, "sk": sk} for pk, sk in unique]
            existing = {(item["pk"], item["sk"]) for item in self._batch_get(keys, projection=["pk", "sk"])}
            missing = [record for key, record in unique.items() if key not in existing]
            for group in _size_groups(missing):
                created += self._create_group(group)
        return created

    def _create_group(self, records: list[JobRecord]) -> list[str]:
        pending = records
        while pending:
            items = [self._put_if_absent(self._job_item(r)) for r in pending]
            failed = self._transact(items)
            if not failed:
                return [r.job_id for r in pending]
            pending = [r for i, r in enumerate(pending) if i not in failed]  # created meanwhile: skip
        return []

    @aws_errors
    def mark_enqueued(self, study_id: str, job_ids: Sequence[str], now: float) -> list[str]:
        unique = list(dict.fromkeys(job_ids))  # a transaction may not name one item twice
        stamped: list[str] = []
        for start in range(0, len(unique), TRANSACT_MAX_ITEMS):
            stamped += self._stamp_group(study_id, unique[start : start + TRANSACT_MAX_ITEMS], now)
        return stamped

    def _stamp_group(self, study_id: str, job_ids: list[str], now: float) -> list[str]:
        """One transaction of stamps; the jobs whose condition failed (finished, unknown, stamped
        later) are left out and the rest written again: a cancelled transaction writes nothing."""
        pending = job_ids
        while pending:
            failed = self._transact([self._stamp(study_id, job_id, now) for job_id in pending])
            if not failed:
                return pending
            pending = [job_id for i, job_id in enumerate(pending) if i not in failed]
        return []

    def _stamp(self, study_id: str, job_id: str, now: float) -> dict[str, Any]:
        expr = _Expression()
        stamp, now_v = expr.n("enqueued_at"), expr.v(now)
        unfinished = ", ".join(expr.v(s.value) for s in UNFINISHED)
        condition = (
            f"attribute_exists({expr.n('pk')}) AND {expr.n('status')} IN ({unfinished}) "
            f"AND (attribute_not_exists({stamp}) OR {stamp} <= {now_v})"
        )
        update = {
            "TableName": self.table_name,
            "Key": serialize_item(self._job_key(study_id, job_id)),
            "UpdateExpression": f"SET {stamp} = {now_v}",
            "ConditionExpression": condition,
            **expr.kwargs(),
        }
        return {"Update": update}

    @staticmethod
    def _job_item(record: JobRecord) -> dict[str, Any]:
        data = record.model_dump(mode="json")
        return {"pk": study_pk(record.study_id), "sk": job_sk(record.job_id), "item_type": "job", **data}

    @aws_errors
    def get_job(self, study_id: str, job_id: str) -> JobRecord | None:
        item = self._get(self._job_key(study_id, job_id))
        return read_job(item, study_id, job_id) if item else None

    @aws_errors
    def find_job(self, job_id: str) -> JobRecord | None:
        expr = _Expression()
        response = self.client.query(
            TableName=self.table_name,
            IndexName=JOB_INDEX,
            KeyConditionExpression=f"{expr.n('job_id')} = {expr.v(job_id)}",
            Limit=1,
            **expr.kwargs(),
        )
        items = response.get("Items", [])
        return _job(deserialize_item(items[0])) if items else None

    @aws_errors
    def list_jobs(self, study_id: str, status: JobStatus | None = None) -> list[JobRecord]:
        where = {"status": JobStatus(status).value} if status is not None else None
        return readable(self._query(study_pk(study_id), JOB_PREFIX, where), _job)

    # --- jobs: transitions ---

    @aws_errors
    def claim(self, study_id: str, job_id: str, owner: str, lease_s: float, now: float) -> JobRecord | None:
        expr = _Expression()
        status, lease = expr.n("status"), expr.n("lease_expires_at")
        running = expr.v(JobStatus.RUNNING.value)
        now_v = expr.v(now)
        started = expr.n("started_at")
        update = expr.update(
            {"lease_owner": owner, "lease_expires_at": now + lease_s, "heartbeat_at": now},
            raw_sets=[
                f"{status} = {running}",
                f"{expr.n('attempt')} = {expr.n('attempt')} + {expr.v(1)}",
                f"{started} = if_not_exists({started}, {now_v})",
            ],
        )
        condition = (
            f"attribute_exists({expr.n('pk')}) AND ({status} = {expr.v(JobStatus.QUEUED.value)} OR "
            f"({status} = {running} AND (attribute_not_exists({lease}) OR {lease} <= {now_v})))"
        )
        try:
            item = self._update(self._job_key(study_id, job_id), expr, update, condition, returns=True)
        except _ConditionFailed as failed:
            if failed.item is None:
                raise NotFoundError(f"unknown job {job_id} in study {study_id}") from None
            return None
        return _job(item)

    @aws_errors
    def renew(self, study_id: str, job_id: str, attempt: int, lease_s: float, now: float) -> JobRecord:
        return self._fenced(study_id, job_id, attempt, {"lease_expires_at": now + lease_s, "heartbeat_at": now})

    @aws_errors
    def update(self, study_id: str, job_id: str, attempt: int, changes: dict[str, Any]) -> None:
        self._fenced(study_id, job_id, attempt, job_changes(changes, HOLDER_FORBIDDEN), returns=False)

    @aws_errors
    def finish(
        self, study_id: str, job_id: str, attempt: int, status: JobStatus, changes: dict[str, Any]
    ) -> JobRecord:
        fields = {
            **job_changes(changes, HOLDER_FORBIDDEN),
            "lease_owner": None,
            "lease_expires_at": None,
            "status": finish_status(status).value,
        }
        return self._fenced(study_id, job_id, attempt, fields)

    @aws_errors
    def reset(
        self, study_id: str, job_id: str, from_statuses: Sequence[JobStatus], to: JobStatus, changes: dict[str, Any]
    ) -> bool:
        to = JobStatus(to)
        fields = {**job_changes(changes, RESET_FORBIDDEN), "status": to.value}
        allowed = [JobStatus(s) for s in dict.fromkeys(from_statuses) if JobStatus(s).can_become(to)]
        if not allowed:
            if self._get(self._job_key(study_id, job_id), projection=["pk"]) is None:
                raise NotFoundError(f"unknown job {job_id} in study {study_id}")
            return False
        expr = _Expression()
        update = expr.update(fields)
        condition = f"{expr.n('status')} IN ({', '.join(expr.v(s.value) for s in allowed)})"
        return self._update_if(study_id, job_id, expr, update, condition)

    @aws_errors
    def request_cancel(self, study_id: str, job_id: str) -> bool:
        expr = _Expression()
        update = expr.update({"cancel_requested": True})
        condition = f"{expr.n('status')} = {expr.v(JobStatus.RUNNING.value)}"
        return self._update_if(study_id, job_id, expr, update, condition)

    def _update_if(self, study_id: str, job_id: str, expr: _Expression, update: str, condition: str) -> bool:
        """An unfenced conditional update of a job: False if the condition failed, NotFoundError if no job."""
        try:
            self._update(self._job_key(study_id, job_id), expr, update, condition)
        except _ConditionFailed as failed:
            if failed.item is None:
                raise NotFoundError(f"unknown job {job_id} in study {study_id}") from None
            return False
        return True

    # --- epochs ---

    @aws_errors
    def put_epoch(self, record: EpochRecord) -> None:
        data = record.model_dump(mode="json", exclude={"job_id"})  # job_id only on job items (the GSI)
        item = {"pk": study_pk(record.study_id), "sk": epoch_sk(record.job_id, record.epoch), "item_type": "epoch"}
        expr = _Expression()
        fence = {
            "ConditionCheck": {
                "TableName": self.table_name,
                "Key": serialize_item(self._job_key(record.study_id, record.job_id)),
                "ConditionExpression": self._fence_condition(expr, record.attempt),
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                **expr.kwargs(),
            }
        }
        put = {"Put": {"TableName": self.table_name, "Item": serialize_item({**item, **data})}}
        failed = self._transact([fence, put])
        if failed:
            self._raise_fenced(record.study_id, record.job_id, record.attempt, failed[0])

    @aws_errors
    def epochs(self, study_id: str, job_id: str) -> list[EpochRecord]:
        items = self._query(study_pk(study_id), f"{EPOCH_PREFIX}{job_id}#")
        return readable(items, lambda item: _epoch(item, study_id, job_id))

    # --- locks ---

    @aws_errors
    def acquire_lock(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        check_lock(name, ttl_s)
        item = {"pk": lock_pk(name), "sk": META_SK, "item_type": "lock", "owner": owner, "expires_at": now + ttl_s}
        expr = _Expression()
        condition = f"attribute_not_exists({expr.n('pk')}) OR {expr.n('expires_at')} <= {expr.v(now)}"
        try:
            self.client.put_item(
                TableName=self.table_name, Item=serialize_item(item), ConditionExpression=condition, **expr.kwargs()
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            return False
        return True

    # --- helpers ---

    @staticmethod
    def _job_key(study_id: str, job_id: str) -> dict[str, str]:
        return {"pk": study_pk(study_id), "sk": job_sk(job_id)}

    @staticmethod
    def _fence_condition(expr: _Expression, attempt: int) -> str:
        return (
            f"{expr.n('status')} = {expr.v(JobStatus.RUNNING.value)} AND "
            f"{expr.n('attempt')} = {expr.v(int(attempt))}"
        )

    def _fenced(
        self, study_id: str, job_id: str, attempt: int, fields: dict[str, Any], returns: bool = True
    ) -> Any:
        expr = _Expression()
        update = expr.update(fields)
        condition = self._fence_condition(expr, attempt)
        try:
            item = self._update(self._job_key(study_id, job_id), expr, update, condition, returns=returns)
        except _ConditionFailed as failed:
            self._raise_fenced(study_id, job_id, attempt, failed.item)
        return _job(item) if returns else None

    @staticmethod
    def _raise_fenced(study_id: str, job_id: str, attempt: int, item: dict[str, Any] | None) -> None:
        if item is None:
            raise NotFoundError(f"unknown job {job_id} in study {study_id}")
        raise LeaseLostError(
            f"job {job_id}: attempt {attempt} is fenced out "
            f"(now {item.get('status')}, attempt {item.get('attempt')})"
        )

    def _put_if_absent(self, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self.table_name,
                "Item": serialize_item(data),
                "ConditionExpression": "attribute_not_exists(#pk)",
                "ExpressionAttributeNames": {"#pk": "pk"},
            }
        }

    def _get(self, key: dict[str, str], projection: Sequence[str] = ()) -> dict[str, Any] | None:
        kwargs: dict[str, Any] = {}
        if projection:
            expr = _Expression()
            kwargs["ProjectionExpression"] = ", ".join(expr.n(p) for p in projection)
            kwargs["ExpressionAttributeNames"] = expr.names
        response = self.client.get_item(
            TableName=self.table_name, Key=serialize_item(key), ConsistentRead=True, **kwargs
        )
        item = response.get("Item")
        return deserialize_item(item) if item else None

    def _update(
        self,
        key: dict[str, str],
        expr: _Expression,
        update: str,
        condition: str,
        returns: bool = False,
    ) -> dict[str, Any] | None:
        """One conditional UpdateItem; raises _ConditionFailed with the old item (or None)."""
        try:
            response = self.client.update_item(
                TableName=self.table_name,
                Key=serialize_item(key),
                UpdateExpression=update,
                ConditionExpression=condition,
                ReturnValues="ALL_NEW" if returns else "NONE",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **expr.kwargs(),
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item")
            raise _ConditionFailed(deserialize_item(old) if old else None) from None
        return deserialize_item(response["Attributes"]) if returns else None

    def _transact(self, items: list[dict[str, Any]]) -> dict[int, dict[str, Any] | None]:
        """TransactWriteItems, retried on conflicts and throttling.

        Returns {} on success, else {index: old item or None} of the items whose condition failed
        (then nothing was written).
        """
        for attempt in range(ATTEMPTS):
            try:
                self.client.transact_write_items(TransactItems=items)
                return {}
            except ClientError as exc:
                if error_code(exc) != "TransactionCanceledException":
                    raise
                reasons = exc.response.get("CancellationReasons") or []
                failed = {
                    i: (deserialize_item(r["Item"]) if r.get("Item") else None)
                    for i, r in enumerate(reasons)
                    if r.get("Code") == "ConditionalCheckFailed"
                }
                if failed:
                    return failed
                if not cancellation_is_retryable(reasons):
                    raise
                backoff(attempt)
        raise RetryableError(f"DynamoDB table '{self.table_name}': transaction still conflicting after retries")

    def _query(
        self,
        pk: str,
        sk_prefix: str,
        where: dict[str, Any] | None = None,
        projection: Sequence[str] = (),
    ) -> Iterator[dict[str, Any]]:
        """Every item of partition `pk` whose sort key starts with `sk_prefix`, in key order."""
        expr = _Expression()
        condition = f"{expr.n('pk')} = {expr.v(pk)}"
        if sk_prefix:
            condition += f" AND begins_with({expr.n('sk')}, {expr.v(sk_prefix)})"
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": condition,
            "ConsistentRead": True,
        }
        if where:
            kwargs["FilterExpression"] = " AND ".join(f"{expr.n(k)} = {expr.v(v)}" for k, v in where.items())
        if projection:
            kwargs["ProjectionExpression"] = ", ".join(expr.n(p) for p in projection)
        if self.page_size:
            kwargs["Limit"] = self.page_size
        kwargs.update(expr.kwargs())
        for page in self.client.get_paginator("query").paginate(**kwargs):
            for item in page.get("Items", []):
                yield deserialize_item(item)

    def _batch_get(self, keys: list[dict[str, str]], projection: Sequence[str] = ()) -> list[dict[str, Any]]:
        """BatchGetItem (consistent) of any number of keys, retrying UnprocessedKeys; key order."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for start in range(0, len(keys), BATCH_GET_MAX_KEYS):
            request: dict[str, Any] = {"Keys": [serialize_item(k) for k in keys[start : start + BATCH_GET_MAX_KEYS]]}
            request["ConsistentRead"] = True
            if projection:
                expr = _Expression()
                request["ProjectionExpression"] = ", ".join(expr.n(p) for p in projection)
                request["ExpressionAttributeNames"] = expr.names
            pending: dict[str, Any] = {self.table_name: request}
            for attempt in range(ATTEMPTS):
                response = self.client.batch_get_item(RequestItems=pending)
                for raw in response.get("Responses", {}).get(self.table_name, []):
                    item = deserialize_item(raw)
                    found[(item["pk"], item["sk"])] = item
                pending = response.get("UnprocessedKeys") or {}
                if not pending:
                    break
                backoff(attempt)
            else:
                raise RetryableError(f"DynamoDB table '{self.table_name}': reads still unprocessed after retries")
        return [found[(k["pk"], k["sk"])] for k in keys if (k["pk"], k["sk"]) in found]

    def __repr__(self) -> str:
        return f"DynamoJobStore({self.table_name!r})"


def study_id_of(item: dict[str, Any]) -> str:
    """The study id in an item's partition key (`STUDY#<study_id>`)."""
    return str(item["pk"]).removeprefix(study_pk(""))


def _job(item: dict[str, Any]) -> JobRecord:
    """The job record in a job item, checked against the ids its keys carry."""
    return read_job(item, study_id_of(item), str(item["sk"]).removeprefix(JOB_PREFIX))


def _epoch(item: dict[str, Any], study_id: str, job_id: str) -> EpochRecord:
    """The epoch record in an epoch item (which leaves `job_id` out: it is in the sort key)."""
    return read_record(EpochRecord, {**item, "job_id": job_id}, f"{item['sk']} of job {job_id} of study {study_id}")


def _chunks(records: Iterable[JobRecord], size: int) -> Iterator[list[JobRecord]]:
    chunk: list[JobRecord] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _size_groups(records: list[JobRecord]) -> Iterator[list[JobRecord]]:
    """Groups that fit one transaction: at most 100 items and 3.5 MB."""
    return bounded_batches(records, TRANSACT_MAX_ITEMS, TRANSACT_MAX_BYTES, _record_size)


def _record_size(record: JobRecord) -> int:
    return len(json.dumps(record.model_dump(mode="json"))) + 200
