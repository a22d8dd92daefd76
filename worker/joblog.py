"""A job's log lines in the artifact store, so that they outlive the instance that ran it.

While an attempt runs, `JobLog` collects every record of the worker's loggers (`spotsweep.*`)
in this process as a JSON line (worker.logs.JsonFormatter, plus the worker's id) and writes them all to
`studies/<s>/jobs/<j>/attempt-<n>/worker.log`: after each epoch's commit (the `epoch` event)
and once the attempt is settled. A spot reclaim then loses at most the lines since the last
epoch. The key is under the attempt's own folder, so a worker fenced out of the job never
writes over its new owner's log; `submit logs JOB` reads the attempts in order
(submitter/logs.py).

One process runs one job at a time (`--concurrency` runs processes), so every record logged
while the job runs belongs to it, whichever thread logged it (the heartbeat's included).
A failed write is one log line and never fails the job: the log is a record of the job, not
part of it.
"""

from __future__ import annotations

import json
import logging
import threading
from types import TracebackType

from shared.jobs import JobRecord
from shared.paths import job_prefix
from shared.ports import ArtifactStore
from worker.logs import JsonFormatter

log = logging.getLogger("spotsweep.worker")

LOG_NAME = "worker.log"
MAX_LINES = 20_000  # a runaway job's log is cut here (the first lines kept), not the worker's memory
FLUSH_EVENTS = frozenset({"epoch"})


def job_log_key(study_id: str, job_id: str, attempt: int) -> str:
    """Where an attempt's log lines go in the artifact store."""
    return f"{job_prefix(study_id, job_id)}/attempt-{attempt}/{LOG_NAME}"


class _WorkerFormatter(JsonFormatter):
    """JSON lines that name their worker: a job's log mixes the lines of every worker that ran it."""

    def __init__(self, worker_id: str) -> None:
        super().__init__()
        self.worker_id = worker_id

    def format(self, record: logging.LogRecord) -> str:
        line = json.loads(super().format(record))
        line.setdefault("worker", self.worker_id)
        return json.dumps(line, default=str)


class JobLog(logging.Handler):
    """`with JobLog(artifacts, record):` collects the job's log lines and writes them out."""

    def __init__(self, artifacts: ArtifactStore, record: JobRecord, worker_id: str) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(_WorkerFormatter(worker_id))
        self.artifacts = artifacts
        self.key = job_log_key(record.study_id, record.job_id, record.attempt)
        self.lines: list[str] = []
        self._writing = threading.local()  # a write's own failure line must not start another write
        self._root = logging.getLogger("spotsweep")
        self._level = logging.NOTSET

    def __enter__(self) -> JobLog:
        self._level = self._root.level
        if self._root.getEffectiveLevel() > logging.INFO:  # a process that never configured logging still keeps INFO lines
            self._root.setLevel(logging.INFO)
        self._root.addHandler(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._root.removeHandler(self)
        self._root.setLevel(self._level)
        self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._writing, "on", False):
            return
        with self.lock or threading.RLock():
            if len(self.lines) < MAX_LINES:
                self.lines.append(self.format(record))
        if getattr(record, "event", None) in FLUSH_EVENTS:
            self.flush()

    def flush(self) -> None:
        """Write every line so far over the attempt's log (one object, rewritten whole)."""
        with self.lock or threading.RLock():
            data = ("\n".join(self.lines) + "\n").encode() if self.lines else b""
        if not data:
            return
        self._writing.on = True
        try:
            self.artifacts.put_bytes(self.key, data)
        except Exception as exc:  # the job's outcome never depends on its log
            log.warning("could not write the job's log to %s: %s", self.key, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                        extra={"event": "job_log_failed"})
        finally:
            self._writing.on = False
