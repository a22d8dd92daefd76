"""The embedded backend: everything in one directory, safe for several worker processes.

- `SqliteJobQueue`: SQS semantics (visibility timeout, receive count, dead-letter after N). A
  dead letter is a row marked `dead`; `receive_dead` hides it with the same `visible_at`. It keeps
  messages until they are deleted (no retention).
- `SqliteJobStore`: records as JSON documents with conditional transitions done under the
  database write lock; locks (`acquire_lock`) are rows of a `locks` table, taken by an upsert
  conditioned on the old one having lapsed.
- `LocalArtifactStore`: a directory; writes are atomic (temp file + rename).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from shared.backends.checks import (
    HOLDER_FORBIDDEN,
    RESET_FORBIDDEN,
    UNFINISHED,
    check_lock,
    checked_bodies,
    finish_status,
    job_changes,
    read_job,
    read_record,
    read_study,
    readable,
)
from shared.backends.locations import parse_location
from shared.backends.sqlite import SqliteDatabase
from shared.errors import LeaseLostError, NotFoundError
from shared.jobs import EpochRecord, JobRecord, StudyRecord
from shared.paths import check_key, safe_join
from shared.ports import Delivery, ObjectInfo, QueueCounts
from shared.status import JobStatus

QUEUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    dead INTEGER NOT NULL DEFAULT 0,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (dead, visible_at);
CREATE UNIQUE INDEX IF NOT EXISTS messages_receipt ON messages (receipt);
"""
MAX_RECEIVE = 10  # deliveries per receive, as on SQS


class SqliteJobQueue:
    """A JobQueue in SQLite (see `shared.ports.JobQueue` for the contract)."""

    def __init__(self, path: Path, visibility_timeout_s: float, max_receives: int = 5) -> None:
        self.db = SqliteDatabase(path, QUEUE_SCHEMA)
        self.visibility_timeout_s = visibility_timeout_s
        self.max_receives = max_receives

    def send(self, bodies: Iterable[str], delay_s: int = 0) -> int:
        visible_at = time.time() + delay_s
        rows = [(uuid.uuid4().hex, body, visible_at) for body in checked_bodies(bodies)]
        with self.db.write() as conn:
            conn.executemany("INSERT INTO messages (message_id, body, visible_at) VALUES (?, ?, ?)", rows)
        return len(rows)

    def receive(self, max_messages: int = 1, wait_s: float = 0.0) -> list[Delivery]:
        count = max(1, min(MAX_RECEIVE, max_messages))
        deadline = time.monotonic() + wait_s
        while True:
            deliveries = self._receive_now(count)
            if deliveries or time.monotonic() >= deadline:
                return deliveries
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def _receive_now(self, max_messages: int) -> list[Delivery]:
        now = time.time()
        deliveries: list[Delivery] = []
        with self.db.write() as conn:
            rows = conn.execute(
                "SELECT id, message_id, body, receive_count FROM messages WHERE dead = 0 AND visible_at <= ?"
                " ORDER BY visible_at, id LIMIT ?",
                (now, max_messages * 4),
            ).fetchall()
            for row in rows:
                if len(deliveries) == max_messages:
                    break
                if row["receive_count"] >= self.max_receives:  # the redrive policy
                    conn.execute(
                        "UPDATE messages SET dead = 1, reason = 'max receives', visible_at = ? WHERE id = ?",
                        (now, row["id"]),
                    )
                    continue
                receipt = uuid.uuid4().hex
                conn.execute(
                    "UPDATE messages SET receive_count = receive_count + 1, receipt = ?, visible_at = ? WHERE id = ?",
                    (receipt, now + self.visibility_timeout_s, row["id"]),
                )
                deliveries.append(Delivery(row["message_id"], row["body"], receipt, row["receive_count"] + 1))
        return deliveries

    def delete(self, receipts: Sequence[str]) -> None:
        with self.db.write() as conn:
            conn.executemany("DELETE FROM messages WHERE receipt = ? AND dead = 0", [(r,) for r in receipts])

    def extend(self, receipt: str, visibility_timeout_s: float) -> bool:
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE messages SET visible_at = ? WHERE receipt = ? AND dead = 0",
                (time.time() + visibility_timeout_s, receipt),
            )
        return cursor.rowcount == 1

    def release(self, receipt: str, delay_s: float = 0.0) -> None:
        with self.db.write() as conn:
            conn.execute(
                "UPDATE messages SET visible_at = ?, receipt = NULL WHERE receipt = ? AND dead = 0",
                (time.time() + delay_s, receipt),
            )

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        # visible_at: when a dead letter may be taken by `receive_dead` (at once)
        with self.db.write() as conn:
            conn.execute(
                "UPDATE messages SET dead = 1, reason = ?, receipt = NULL, visible_at = ? WHERE receipt = ? AND dead = 0",
                (reason[:1000], time.time(), delivery.receipt),
            )

    def counts(self) -> QueueCounts:
        now = time.time()
        row = self.db.read(
            "SELECT SUM(dead = 0 AND visible_at <= ?) AS visible, SUM(dead = 0 AND visible_at > ?) AS in_flight,"
            " SUM(dead = 1) AS dead FROM messages",
            (now, now),
        )[0]
        return QueueCounts(row["visible"] or 0, row["in_flight"] or 0, row["dead"] or 0)

    def dead_letters(self, limit: int = 100) -> list[str]:
        rows = self.db.read("SELECT body FROM messages WHERE dead = 1 ORDER BY id LIMIT ?", (limit,))
        return [row["body"] for row in rows]

    def receive_dead(self, max_messages: int = 10, hide_s: float = 60.0) -> list[Delivery]:
        now = time.time()
        count = max(1, min(MAX_RECEIVE, max_messages))
        deliveries: list[Delivery] = []
        with self.db.write() as conn:
            rows = conn.execute(
                "SELECT id, message_id, body, receive_count FROM messages WHERE dead = 1 AND visible_at <= ?"
                " ORDER BY id LIMIT ?",
                (now, count),
            ).fetchall()
            for row in rows:
                receipt = uuid.uuid4().hex
                conn.execute("UPDATE messages SET receipt = ?, visible_at = ? WHERE id = ?", (receipt, now + hide_s, row["id"]))
                deliveries.append(Delivery(row["message_id"], row["body"], receipt, row["receive_count"]))
        return deliveries

    def delete_dead(self, receipts: Sequence[str]) -> None:
        with self.db.write() as conn:
            conn.executemany("DELETE FROM messages WHERE receipt = ? AND dead = 1", [(r,) for r in receipts])


STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    study_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    status TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (study_id, job_id)
);
CREATE INDEX IF NOT EXISTS jobs_by_id ON jobs (job_id);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (study_id, status);
CREATE TABLE IF NOT EXISTS epochs (
    study_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (study_id, job_id, epoch)
);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""
JOB_COLUMNS = "study_id, job_id, doc"


class SqliteJobStore:
    """A JobStore in SQLite (see `shared.ports.JobStore` for the contract).

    Each record is a JSON document (`doc`) beside the columns it is looked up by. A transition
    reads, checks and rewrites the document inside one write transaction, so it is atomic
    across worker processes; the record is validated when read (`shared.backends.checks`).
    """

    def __init__(self, path: Path) -> None:
        self.db = SqliteDatabase(path, STORE_SCHEMA)

    # --- studies ---

    def put_study(self, study: StudyRecord) -> bool:
        with self.db.write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO studies (study_id, created_at, doc) VALUES (?, ?, ?)",
                (study.study_id, study.created_at, study.model_dump_json()),
            )
        return cursor.rowcount == 1

    def get_study(self, study_id: str) -> StudyRecord | None:
        rows = self.db.read("SELECT study_id, doc FROM studies WHERE study_id = ?", (study_id,))
        return _study(rows[0]) if rows else None

    def list_studies(self) -> list[StudyRecord]:
        rows = self.db.read("SELECT study_id, doc FROM studies ORDER BY created_at DESC, study_id")
        return readable(rows, _study)

    def mark_stage(self, study_id: str, stage: str) -> bool:
        with self.db.write() as conn:
            row = conn.execute("SELECT study_id, doc FROM studies WHERE study_id = ?", (study_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"unknown study {study_id}")
            study = _study(row)
            if stage in study.stages:
                return False
            study.stages.append(stage)
            conn.execute("UPDATE studies SET doc = ? WHERE study_id = ?", (study.model_dump_json(), study_id))
        return True

    # --- jobs: creation and reads ---

    def create_jobs(self, records: Iterable[JobRecord]) -> list[str]:
        created = []
        with self.db.write() as conn:
            for record in records:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO jobs (study_id, job_id, status, doc) VALUES (?, ?, ?, ?)",
                    (record.study_id, record.job_id, record.status.value, record.model_dump_json()),
                )
                if cursor.rowcount == 1:
                    created.append(record.job_id)
        return created

    def mark_enqueued(self, study_id: str, job_ids: Sequence[str], now: float) -> list[str]:
        stamped = []
        with self.db.write() as conn:
            for job_id in dict.fromkeys(job_ids):
                row = conn.execute(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE study_id = ? AND job_id = ?", (study_id, job_id)
                ).fetchone()
                if row is None:
                    continue
                record = _job(row)
                if record.status in UNFINISHED and (record.enqueued_at or 0.0) <= now:
                    self._save(conn, _changed(record, {"enqueued_at": now}))
                    stamped.append(job_id)
        return stamped

    def get_job(self, study_id: str, job_id: str) -> JobRecord | None:
        rows = self.db.read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE study_id = ? AND job_id = ?", (study_id, job_id))
        return _job(rows[0]) if rows else None

    def find_job(self, job_id: str) -> JobRecord | None:
        rows = self.db.read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ? LIMIT 1", (job_id,))
        return _job(rows[0]) if rows else None

    def list_jobs(self, study_id: str, status: JobStatus | None = None) -> list[JobRecord]:
        if status is None:
            rows = self.db.read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE study_id = ? ORDER BY job_id", (study_id,))
        else:
            rows = self.db.read(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE study_id = ? AND status = ? ORDER BY job_id",
                (study_id, JobStatus(status).value),
            )
        return readable(rows, _job)

    # --- jobs: transitions ---

    def claim(self, study_id: str, job_id: str, owner: str, lease_s: float, now: float) -> JobRecord | None:
        with self.db.write() as conn:
            record = self._load(conn, study_id, job_id)
            claimable = record.status == JobStatus.QUEUED or (
                record.status == JobStatus.RUNNING and record.lease_expired(now)
            )
            if not claimable:
                return None
            record = record.model_copy(
                update={
                    "status": JobStatus.RUNNING,
                    "attempt": record.attempt + 1,
                    "lease_owner": owner,
                    "lease_expires_at": now + lease_s,
                    "heartbeat_at": now,
                    "started_at": record.started_at or now,
                }
            )
            self._save(conn, record)
        return record

    def renew(self, study_id: str, job_id: str, attempt: int, lease_s: float, now: float) -> JobRecord:
        return self._fenced(study_id, job_id, attempt, {"lease_expires_at": now + lease_s, "heartbeat_at": now})

    def update(self, study_id: str, job_id: str, attempt: int, changes: dict[str, Any]) -> None:
        self._fenced(study_id, job_id, attempt, job_changes(changes, HOLDER_FORBIDDEN))

    def finish(
        self, study_id: str, job_id: str, attempt: int, status: JobStatus, changes: dict[str, Any]
    ) -> JobRecord:
        fields = {
            **job_changes(changes, HOLDER_FORBIDDEN),
            "lease_owner": None,
            "lease_expires_at": None,
            "status": finish_status(status),
        }
        return self._fenced(study_id, job_id, attempt, fields)

    def reset(
        self, study_id: str, job_id: str, from_statuses: Sequence[JobStatus], to: JobStatus, changes: dict[str, Any]
    ) -> bool:
        to = JobStatus(to)
        fields = {**job_changes(changes, RESET_FORBIDDEN), "status": to}
        with self.db.write() as conn:
            record = self._load(conn, study_id, job_id)
            if record.status not in from_statuses or not record.status.can_become(to):
                return False
            self._save(conn, _changed(record, fields))
        return True

    def request_cancel(self, study_id: str, job_id: str) -> bool:
        with self.db.write() as conn:
            record = self._load(conn, study_id, job_id)
            if record.status != JobStatus.RUNNING:
                return False
            self._save(conn, _changed(record, {"cancel_requested": True}))
        return True

    # --- epochs ---

    def put_epoch(self, record: EpochRecord) -> None:
        with self.db.write() as conn:
            self._check_fence(self._load(conn, record.study_id, record.job_id), record.attempt)
            conn.execute(
                "INSERT OR REPLACE INTO epochs (study_id, job_id, epoch, doc) VALUES (?, ?, ?, ?)",
                (record.study_id, record.job_id, record.epoch, record.model_dump_json()),
            )

    def epochs(self, study_id: str, job_id: str) -> list[EpochRecord]:
        rows = self.db.read(
            "SELECT epoch, doc FROM epochs WHERE study_id = ? AND job_id = ? ORDER BY epoch", (study_id, job_id)
        )
        what = f"job {job_id} of study {study_id}"
        return readable(rows, lambda row: read_record(EpochRecord, row["doc"], f"epoch {row['epoch']} of {what}"))

    # --- locks ---

    def acquire_lock(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        check_lock(name, ttl_s)
        with self.db.write() as conn:
            cursor = conn.execute(
                "INSERT INTO locks (name, owner, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at"
                " WHERE locks.expires_at <= ?",
                (name, owner, now + ttl_s, now),
            )
        return cursor.rowcount == 1

    # --- helpers ---

    def _fenced(self, study_id: str, job_id: str, attempt: int, fields: dict[str, Any]) -> JobRecord:
        """Apply checked `fields` for the holder of `attempt`: LeaseLostError for anyone else."""
        with self.db.write() as conn:
            record = self._load(conn, study_id, job_id)
            self._check_fence(record, attempt)
            record = _changed(record, fields)
            self._save(conn, record)
        return record

    @staticmethod
    def _check_fence(record: JobRecord, attempt: int) -> None:
        if record.status != JobStatus.RUNNING or record.attempt != attempt:
            raise LeaseLostError(
                f"job {record.job_id}: attempt {attempt} is fenced out "
                f"(now {record.status.value}, attempt {record.attempt})"
            )

    @staticmethod
    def _load(conn: sqlite3.Connection, study_id: str, job_id: str) -> JobRecord:
        row = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE study_id = ? AND job_id = ?", (study_id, job_id)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"unknown job {job_id} in study {study_id}")
        return _job(row)

    @staticmethod
    def _save(conn: sqlite3.Connection, record: JobRecord) -> None:
        conn.execute(
            "UPDATE jobs SET status = ?, doc = ? WHERE study_id = ? AND job_id = ?",
            (record.status.value, record.model_dump_json(), record.study_id, record.job_id),
        )


def _job(row: sqlite3.Row) -> JobRecord:
    return read_job(row["doc"], row["study_id"], row["job_id"])


def _study(row: sqlite3.Row) -> StudyRecord:
    return read_study(row["doc"], row["study_id"])


def _changed(record: JobRecord, fields: dict[str, Any]) -> JobRecord:
    """A copy of `record` with `fields` (already checked by the caller) applied."""
    return JobRecord.model_validate({**record.model_dump(), **fields})


class LocalArtifactStore:
    """An ArtifactStore in a local directory (see `shared.ports.ArtifactStore`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def put_file(self, local_path: Path, key: str) -> str:
        target = safe_join(self.root, key)
        with _temp_beside(target) as temp:
            shutil.copyfile(local_path, temp)
            os.replace(temp, target)
        return str(target)

    def put_bytes(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        target = safe_join(self.root, key)
        with _temp_beside(target) as temp:
            temp.write_bytes(data)
            if not if_absent:
                os.replace(temp, target)
                return True
            try:
                os.link(temp, target)  # atomic create-if-absent
            except FileExistsError:
                return False
        return True

    def get_file(self, key: str, local_path: Path) -> None:
        source = self._existing(key)
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        with _temp_beside(local_path) as temp:
            shutil.copyfile(source, temp)
            os.replace(temp, local_path)

    def get_bytes(self, key: str) -> bytes:
        return self._existing(key).read_bytes()

    def exists(self, key: str) -> bool:
        return safe_join(self.root, key).is_file()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = safe_join(self.root, prefix.rstrip("/")) if prefix.strip("/") else self.root
        start = base if base.is_dir() else base.parent
        keys = []
        for path in start.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix) and not path.name.startswith(".tmp-"):
                keys.append(ObjectInfo(key, path.stat().st_size))
        yield from sorted(keys, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        safe_join(self.root, key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return str(self.root / check_key(key))

    def key_for(self, location: str) -> str:
        # a directory has no bucket: an s3:// location is one this store cannot reach
        return parse_location(location)

    def _existing(self, key: str) -> Path:
        path = safe_join(self.root, key)
        if not path.is_file():
            raise NotFoundError(f"no artifact {key!r} in {self.root}")
        return path


class _temp_beside:
    """A temporary file next to `target` (same filesystem, so os.replace is atomic), removed on exit."""

    def __init__(self, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        os.close(fd)
        self.path = Path(name)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)
