"""The one error tree.

Every failure a job can meet is one of three kinds, and the worker's outcome map
(`worker.outcomes`) turns the kind into what happens to the message:

- `RetryableError`: transient (throttling, network, a lost race). Release the message with
  backoff; the queue's redrive sends it to the dead-letter queue after N receives.
- `PermanentError`: the job can never succeed as specified (bad spec, missing dataset,
  failed weights download). Record FAILED and delete the message.
- `FatalError`: the worker itself cannot go on (broken configuration, unknown backend).
  Release the message untouched and stop the worker.
"""

from __future__ import annotations


class SpotsweepError(Exception):
    """Base of every error spotsweep raises on purpose."""


class RetryableError(SpotsweepError):
    """Transient: the same work may succeed if tried again later."""


class PermanentError(SpotsweepError):
    """The job can never succeed as specified."""


class FatalError(SpotsweepError):
    """The process cannot continue (configuration, credentials, missing resource)."""


class BadInputError(PermanentError):
    """User input is invalid. `path` is the JSON path of the offending field, if known."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class NotFoundError(PermanentError):
    """A study, job, dataset or artifact that was asked for does not exist."""


class LeaseLostError(RetryableError):
    """This worker's fencing token is stale: another worker owns the job now.

    The fenced-out worker must stop and must neither ack nor release the message.
    """


class CorruptRecordError(PermanentError):
    """A record read back from the store does not validate (written by a newer, older or hostile
    writer). The job it names can never run as stored: record it FAILED or set it aside."""


class StopRequestedError(SpotsweepError):
    """A long step outside training (a dataset sync) stopped because its caller's `should_stop`
    returned a reason.

    Not a failure of the job: the caller turns `reason` (whatever `should_stop` returned, e.g.
    the worker's `StopReason`) into a stopped result, as training's own stop requests become
    one. Nothing the step left behind is wrong: a later sync resumes it.
    """

    def __init__(self, reason: object) -> None:
        super().__init__(f"stop requested: {reason}")
        self.reason = reason


class ResourceMissingError(FatalError):
    """A queue, table or bucket that the configuration names does not exist."""


class VisibilityLimitError(RetryableError):
    """The queue refuses to keep a received message hidden any longer (SQS: 12 hours from its
    receipt). Not a stale receipt: the delivery is still ours, but a job that keeps running on it
    must hand itself to a fresh message before the message reappears."""
