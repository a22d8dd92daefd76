"""`submit logs JOB`: a job's log lines, every attempt in order, from the artifact store.

Each attempt's worker writes its lines (JSON, one a line) to
`studies/<s>/jobs/<j>/attempt-<n>/worker.log` (worker.joblog, which this module mirrors
without importing the worker): after each epoch and once the attempt is settled, so that they
outlive the instance. An attempt without a log (claimed by a worker that died before its
first epoch) is skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from shared.jobs import JobRecord
from shared.paths import job_prefix
from shared.ports import ArtifactStore

LOG_NAME = "worker.log"  # worker.joblog.LOG_NAME
ATTEMPT_LOG = re.compile(r"/attempt-(\d+)/" + re.escape(LOG_NAME) + r"$")


@dataclass
class LogLine:
    """One line of a job's log: which attempt wrote it, and the line as the worker wrote it."""

    attempt: int
    fields: dict[str, Any]

    def text(self) -> str:
        """`#<attempt> <worker> <level> [<event>] <msg>`: one line for a person."""
        event = self.fields.get("event")
        tag = f" [{event}]" if event else ""
        level = str(self.fields.get("level", "?"))
        return f"#{self.attempt} {self.fields.get('worker', '?')} {level:7s}{tag} {self.fields.get('msg', '')}"


def attempt_logs(artifacts: ArtifactStore, record: JobRecord) -> dict[int, str]:
    """Each attempt's log key, by attempt number (found by listing, so a lost count misses none)."""
    prefix = job_prefix(record.study_id, record.job_id)
    found: dict[int, str] = {}
    for info in artifacts.list(f"{prefix}/"):
        match = ATTEMPT_LOG.search(info.key)
        if match:
            found[int(match.group(1))] = info.key
    return dict(sorted(found.items()))


def job_log_lines(artifacts: ArtifactStore, record: JobRecord) -> list[LogLine]:
    """Every attempt's lines, attempts in order, each attempt's lines as written."""
    lines: list[LogLine] = []
    for attempt, key in attempt_logs(artifacts, record).items():
        for raw in artifacts.get_bytes(key).decode("utf-8", errors="replace").splitlines():
            lines.append(LogLine(attempt, _fields(raw)))
    return lines


def _fields(raw: str) -> dict[str, Any]:
    """A line's fields; a line that is not a JSON object is kept as its message."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {"msg": raw}
    return parsed if isinstance(parsed, dict) else {"msg": raw}
