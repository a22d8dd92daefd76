"""The reconciler as a scheduled AWS Lambda function: stranded jobs are repaired with no worker up.

Why a function. The reconciler (`shared.reconcile`) runs when a study is submitted again, on
`submit repair`, and in idle workers. With the fleet at zero none of these happens by itself: a
purged queue, or messages that SQS's retention dropped, leave QUEUED records with no message, so
the backlog (visible + in-flight messages) is 0, the autoscaling group (which scales on that
backlog) starts no worker, and the study waits until someone types a command. A tiny function on
a schedule (terraform/reconciler.tf: an EventBridge rule every `reconcile_interval_minutes`)
sends the missing messages; the backlog rises and the group scales out as for a new study. It
costs cents a month (about 8,600 runs of a second or two at 5 minutes, inside Lambda's free tier
for most accounts, plus the table reads of one reconciler pass) and keeps the fleet at zero.

Alternatives considered:
- Keeping one worker up (`min_size = 1`): a GPU instance billed around the clock, to make a few
  API calls. It breaks scale-to-zero, the stack's first promise.
- Counting the store's QUEUED jobs in the scaling metric: nothing publishes that metric, so it
  needs a scheduled publisher anyway (this function, doing less), and it would start a GPU
  instance only to run the reconciler there.

One run is `reconcile_if_due` with the store lock that idle workers take: across the function and
every worker, the reconciler runs at most once per lock period, so a run while workers are up
usually finds the lock held and does nothing. The lock is held for most of the interval
(`LOCK_FRACTION`), not all of it: EventBridge fires a little early or late, and a lock that
outlived the interval would make every other scheduled run a no-op.

Least privilege: the function opens only the queue, the dead-letter queue and the table
(`open_control_plane`). It never touches the bucket, and does not make `open_aws`'s start-up
checks (DescribeTable, HeadBucket), so its role needs only the calls of `shared.reconcile` (see
terraform/reconciler.tf for the list and why each is there).

Settings: `ReconcilerSettings`, the submitter's SPOTSWEEP_* variables (Terraform sets them on the
function) plus `SPOTSWEEP_RECONCILE_INTERVAL_S`. Credentials: the function's role, through boto3's
default session; endpoints from the standard `AWS_ENDPOINT_URL` variables (tests: moto's server).
This module is in the light package: it never imports TensorFlow, pandas or anything the function
package (`submitter.deploy`) does not ship.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field

from shared.backends.aws import DynamoJobStore, S3ArtifactStore, SqsJobQueue, aws_clients
from shared.backends.aws_errors import translate
from shared.config import BackendConfig
from shared.ports import Backend
from shared.reconcile import ReconcilePolicy, reconcile_if_due
from submitter.settings import SubmitterSettings

LOCK_FRACTION = 0.8  # of the interval: the store lock lapses before the next scheduled run is due
OWNER_PREFIX = "lambda"  # the lock's owner, for people reading the table: lambda:<request id>


class ReconcilerSettings(SubmitterSettings):
    """The function's settings: the submitter's, on the AWS backend only, and the schedule's interval."""

    backend: Literal["aws"] = "aws"  # the function exists only in a Terraform stack
    reconcile_interval_s: float = Field(300.0, gt=0)  # the schedule's period (terraform: minutes x 60)

    @property
    def lock_s(self) -> float:
        return self.reconcile_interval_s * LOCK_FRACTION


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda's entry point (`submitter.reconciler_lambda.handler`): one reconciler run, if due.

    `event` (the schedule's) is not read. Logs one JSON line (the result below) and returns it:
    `ran` (False: the lock was held: a worker or an earlier run did it within the interval),
    `changed`, and `report` (`ReconcileReport.document()`, None when it did not run). A failure
    is logged as one JSON line too, then raised, so the invocation counts as an error.
    """
    owner = f"{OWNER_PREFIX}:{getattr(context, 'aws_request_id', None) or 'local'}"
    try:
        result = run_once(ReconcilerSettings(), owner, time.time())
    except Exception as exc:  # logged as the run's one line, then raised: Lambda records the error
        _log_line({"event": "reconcile_failed", "owner": owner, "error": f"{type(exc).__name__}: {exc}"[:1000]})
        raise
    _log_line(result)
    return result


def run_once(settings: ReconcilerSettings, owner: str, now: float, session: Any = None) -> dict[str, Any]:
    """Open the control plane and run the reconciler if the store lock is free (see `handler`)."""
    backend = open_control_plane(settings, session)
    policy = ReconcilePolicy.for_config(settings)  # as an idle worker's: the store's own margins
    report = reconcile_if_due(backend, owner, policy, now, settings.lock_s)
    return {
        "event": "reconciled" if report is not None else "not_due",
        "owner": owner,
        "stack": settings.stack,
        "ran": report is not None,
        "changed": bool(report and report.changed),
        "report": report.document() if report is not None else None,
    }


def open_control_plane(config: BackendConfig, session: Any = None) -> Backend:
    """The stack's queue, dead-letter queue and table as a Backend, resolving only the queues'
    URLs. Its artifact store is never called: the function's role grants no S3 action at all."""
    clients = aws_clients(config, session)
    sqs = clients["sqs"]
    queue = SqsJobQueue(
        sqs,
        _queue_url(sqs, config.resolved_queue_name),
        _queue_url(sqs, config.resolved_dlq_name),
        config.lease_s,
        config.max_receives,
    )
    return Backend(
        queue=queue,
        store=DynamoJobStore(clients["dynamodb"], config.resolved_table_name),
        artifacts=S3ArtifactStore(clients["s3"], config.resolved_bucket),
        name="aws",
    )


def _queue_url(sqs: Any, name: str) -> str:
    try:
        return str(sqs.get_queue_url(QueueName=name)["QueueUrl"])
    except (ClientError, BotoCoreError) as exc:  # a missing queue: one line naming it
        raise translate(exc, "SQS queue", name, sqs.meta.region_name) from exc


def _log_line(document: dict[str, Any]) -> None:
    # print, not logging: Lambda sends stdout to the function's log group line by line, whatever
    # level the runtime gives the root logger.
    print(json.dumps(document, sort_keys=True, default=str), flush=True)
