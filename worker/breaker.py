"""The circuit breaker: a worker that fails job after job stops taking work.

Why: a host with a full disk, a broken GPU or a lost mount fails every job it takes, in
milliseconds, and each failure is an ordinary "retry" as far as the job can tell. Left alone, such a
worker takes message after message and drains the whole queue into the dead-letter queue (6 jobs
FAILED in 57 s in the review's repro) while healthy workers sit idle. The breaker tells the host's
fault apart from the jobs' faults by one signal: failures that are consecutive *and on different
jobs*.

The policy:
- `record_failure(job_id, error)` after an attempt that ended in an error the job cannot be blamed
  for (what the loop settles as "retry" or "fatal"). The failure counts towards the threshold only
  if it is the first failure of that job in the current run: one job failing again and again is
  that job's fault, and the store's failure count for the job deals with it, not the host.
- `record_success(job_id)` after an attempt that shows the host works (a job succeeded, or ended
  on its own terms: a job's permanent error, a cancellation, a preemption). It ends the run of
  failures: the count starts again from zero.
- After `threshold` failures on different jobs in a row the breaker trips, and stays tripped: the
  worker stops taking work, logs `reason` (one line) and exits non-zero; on AWS it also leaves its
  autoscaling group, so that a fresh host replaces it.
- `touched` names the jobs whose failures counted. The loop puts them back on the queue for a
  healthy worker as if the worker had been preempted, not as the jobs' failures: none of them
  goes to the dead-letter queue because of a sick host.

The breaker counts nothing by time: a run of failures is broken only by a success. It is not
thread-safe; each worker process runs one job at a time and owns one breaker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_ERROR_CHARS = 300  # the reason is one log line; a traceback's first line is enough


@dataclass
class CircuitBreaker:
    """Trips after `threshold` consecutive failures on different jobs (see the module docstring)."""

    threshold: int
    touched: list[str] = field(default_factory=list, init=False)  # jobs whose failures counted
    failures: int = field(default=0, init=False)  # consecutive failures, repeats of a job included
    reason: str = field(default="", init=False)  # one line; empty until tripped
    last_error: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"the circuit breaker threshold must be at least 1, got {self.threshold}")

    @property
    def tripped(self) -> bool:
        return bool(self.reason)

    def record_success(self, job_id: str) -> None:
        """An attempt of `job_id` showed the host works: the run of failures is over, whichever job
        it was. Once tripped, the breaker stays tripped (the worker is on its way out)."""
        if self.tripped:
            return
        self.touched.clear()
        self.failures = 0
        self.last_error = ""

    def record_failure(self, job_id: str, error: str) -> None:
        """An attempt of `job_id` ended in `error` ("Type: message"), not the job's own fault.
        Trips the breaker when this makes `threshold` different jobs failed in a row."""
        if self.tripped:
            return
        self.failures += 1
        self.last_error = _one_line(error)
        if job_id not in self.touched:
            self.touched.append(job_id)
        if len(self.touched) >= self.threshold:
            failures, jobs = _plural(self.failures, "consecutive failure"), _plural(len(self.touched), "different job")
            self.reason = f"circuit breaker: {failures} on {jobs} (last: {self.last_error})"


def _one_line(error: str) -> str:
    lines = error.strip().splitlines()
    return lines[0][:MAX_ERROR_CHARS] if lines else "no error message"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
