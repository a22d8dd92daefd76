"""The AWS backend: SQS (+ dead-letter queue), DynamoDB and S3 behind the three ports.

- `open_aws(config, session)`: clients from a boto3 session (the standard credential chain;
  endpoints from the standard `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` variables, which
  botocore honours itself), resolves the queue URLs and checks that the table and the bucket
  exist: a missing one is `ResourceMissingError` with one line naming it.
- `provision(config, session)`: `submit init --backend aws`. Creates whatever of the DLQ, queue,
  table and bucket is missing (idempotent) and says what it created or found.

The names derive from the stack (`BackendConfig.resolved_*`), the same names Terraform uses.
"""

from __future__ import annotations

import json
import math
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.backends.aws_dynamo import JOB_INDEX, DynamoJobStore
from shared.backends.aws_errors import error_code, missing_message, translate
from shared.backends.aws_s3 import S3ArtifactStore
from shared.backends.aws_sqs import SqsJobQueue, redrive_policy
from shared.ports import Backend
from shared.config import BackendConfig
from shared.errors import FatalError, ResourceMissingError

__all__ = ["DynamoJobStore", "S3ArtifactStore", "SqsJobQueue", "aws_clients", "open_aws", "provision"]

MAX_ATTEMPTS = 5
DLQ_RETENTION_S = 14 * 24 * 3600  # the longest SQS keeps a message: time to look at poison
QUEUE_RETENTION_S = 14 * 24 * 3600  # a study may sit in the queue while workers scale up


def _session(config: BackendConfig, session: Any) -> Any:
    if session is not None:
        return session
    import boto3

    return boto3.Session(region_name=config.region) if config.region else boto3.Session()


def _region(config: BackendConfig, session: Any) -> str:
    region = config.region or session.region_name
    if not region:
        raise FatalError("no AWS region configured: set SPOTSWEEP_REGION or AWS_DEFAULT_REGION")
    return region


def _client_config(session: Any, pool: int = 10) -> Config:
    # `standard` retries unless the user asked for `adaptive` (AWS_RETRY_MODE / ~/.aws/config)
    mode = "standard"
    try:
        if session._session.get_config_variable("retry_mode") == "adaptive":
            mode = "adaptive"
    except Exception:  # noqa: BLE001 - a session without botocore internals: keep the default
        pass
    return Config(retries={"mode": mode, "max_attempts": MAX_ATTEMPTS}, max_pool_connections=pool)


def aws_clients(config: BackendConfig, session: Any = None) -> dict[str, Any]:
    """{"sqs", "dynamodb", "s3"} clients for `config` (region from the config or the session)."""
    session = _session(config, session)
    region = _region(config, session)
    return {
        "sqs": session.client("sqs", region_name=region, config=_client_config(session)),
        "dynamodb": session.client("dynamodb", region_name=region, config=_client_config(session)),
        "s3": session.client("s3", region_name=region, config=_client_config(session, pool=32)),
    }


def open_aws(config: BackendConfig, session: Any = None) -> Backend:
    clients = aws_clients(config, session)
    sqs, dynamodb, s3 = clients["sqs"], clients["dynamodb"], clients["s3"]
    region = sqs.meta.region_name
    queue_url = _queue_url(sqs, config.resolved_queue_name, region)
    dlq_url = _queue_url(sqs, config.resolved_dlq_name, region)
    _check_table(dynamodb, config.resolved_table_name, region)
    _check_bucket(s3, config.resolved_bucket, region)
    return Backend(
        queue=SqsJobQueue(sqs, queue_url, dlq_url, config.lease_s, config.max_receives),
        store=DynamoJobStore(dynamodb, config.resolved_table_name),
        artifacts=S3ArtifactStore(s3, config.resolved_bucket),
        name="aws",
    )


# --- resolving and checking resources ---


def _queue_url(sqs: Any, name: str, region: str) -> str:
    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, "SQS queue", name, region) from exc


def _find_queue(sqs: Any, name: str, region: str) -> str | None:
    try:
        return _queue_url(sqs, name, region)
    except ResourceMissingError:
        return None


def _check_table(dynamodb: Any, name: str, region: str) -> dict[str, Any]:
    try:
        return dynamodb.describe_table(TableName=name)["Table"]
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, "DynamoDB table", name, region) from exc


def _check_bucket(s3: Any, name: str, region: str) -> None:
    try:
        s3.head_bucket(Bucket=name)
    except ClientError as exc:
        code = error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise ResourceMissingError(missing_message("S3 bucket", name, None)) from None
        if code in ("403", "AccessDenied"):
            raise FatalError(
                f"S3 bucket '{name}' exists but these credentials may not use it (403): "
                "it may belong to another account; set SPOTSWEEP_BUCKET"
            ) from None
        raise translate(exc, "S3 bucket", name, region) from exc
    except BotoCoreError as exc:
        raise translate(exc, "S3 bucket", name, region) from exc


# --- provisioning (`submit init --backend aws`) ---


def provision(config: BackendConfig, session: Any = None) -> list[str]:
    """Create the DLQ, the queue (redrive to the DLQ), the table and the bucket where missing.
    Idempotent; returns one human line per resource."""
    clients = aws_clients(config, session)
    sqs, dynamodb, s3 = clients["sqs"], clients["dynamodb"], clients["s3"]
    region = sqs.meta.region_name
    lines: list[str] = []
    try:
        dlq_url, line = _ensure_queue(
            sqs,
            config.resolved_dlq_name,
            region,
            {"MessageRetentionPeriod": str(DLQ_RETENTION_S), "SqsManagedSseEnabled": "true"},
        )
        lines.append(line)
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        _, line = _ensure_queue(
            sqs,
            config.resolved_queue_name,
            region,
            {
                "VisibilityTimeout": str(max(0, min(43_200, math.ceil(config.lease_s)))),
                "ReceiveMessageWaitTimeSeconds": "20",
                "MessageRetentionPeriod": str(QUEUE_RETENTION_S),
                "RedrivePolicy": redrive_policy(dlq_arn, config.max_receives),
                "SqsManagedSseEnabled": "true",
            },
        )
        lines.append(line)
        lines.append(_ensure_table(dynamodb, config.resolved_table_name, region))
        lines.append(_ensure_bucket(s3, config.resolved_bucket, region))
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, "AWS resource", config.stack, region) from exc
    return lines


def _ensure_queue(sqs: Any, name: str, region: str, attributes: dict[str, str]) -> tuple[str, str]:
    url = _find_queue(sqs, name, region)
    if url is not None:
        current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        note = ""
        if "RedrivePolicy" in attributes:
            wanted = json.loads(attributes["RedrivePolicy"])
            have = json.loads(current.get("RedrivePolicy") or "{}")
            if have.get("deadLetterTargetArn") != wanted["deadLetterTargetArn"] or int(
                have.get("maxReceiveCount", 0)
            ) != int(wanted["maxReceiveCount"]):
                note = " (warning: its redrive policy differs from the configuration; left as it is)"
        return url, f"found SQS queue {name}{note}"
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    return url, f"created SQS queue {name}"


def _ensure_table(dynamodb: Any, name: str, region: str) -> str:
    try:
        _check_table(dynamodb, name, region)
        return f"found DynamoDB table {name}"
    except ResourceMissingError:
        pass
    try:
        dynamodb.create_table(
            TableName=name,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
                {"AttributeName": "job_id", "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": JOB_INDEX,
                    "KeySchema": [{"AttributeName": "job_id", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            SSESpecification={"Enabled": True},
        )
    except ClientError as exc:
        if error_code(exc) != "ResourceInUseException":  # created meanwhile by someone else
            raise
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 90})
    return f"created DynamoDB table {name} (on-demand, GSI {JOB_INDEX})"


def _ensure_bucket(s3: Any, name: str, region: str) -> str:
    try:
        _check_bucket(s3, name, region)
        return f"found S3 bucket {name}"
    except ResourceMissingError:
        pass
    kwargs: dict[str, Any] = {"Bucket": name}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as exc:
        if error_code(exc) != "BucketAlreadyOwnedByYou":
            raise
    s3.get_waiter("bucket_exists").wait(Bucket=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]
        },
    )
    return f"created S3 bucket {name} (public access blocked, SSE-S3)"
