"""Worker logging: one human line per event by default, JSON lines on request.

Every record carries `event`, and `job_id`/`attempt` when it is about a job.
"""

from __future__ import annotations

import json
import logging
import sys
import time

FIELDS = ("event", "study_id", "job_id", "attempt", "epoch", "reason", "worker")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": round(record.created, 3), "level": record.levelname.lower(), "msg": record.getMessage()}
        line.update({k: getattr(record, k) for k in FIELDS if hasattr(record, k)})
        line.update(getattr(record, "data", {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        job = f" [{record.job_id}#{record.attempt}]" if hasattr(record, "job_id") else ""
        text = f"{stamp} {record.levelname.lower():7s}{job} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(log_format: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else HumanFormatter())
    root = logging.getLogger("spotsweep")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
