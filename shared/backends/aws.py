"""The AWS backend: SQS (+ dead-letter queue), DynamoDB and S3 behind the three ports.

- `open_aws(config, session)`: clients from a boto3 session (the standard credential chain;
  endpoints from the standard `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` variables, which
  botocore honours itself), resolves the queue URLs and checks that the table and the bucket
  exist: a missing one is `ResourceMissingError` with one line naming it.
- `provision(config, session)`: `submit init --backend aws`. Creates whatever of the DLQ, queue,
  table and bucket is missing (idempotent) and says what it created or found. The bucket is made
  like Terraform's (`terraform/bucket.tf`): private, encrypted, versioned (old versions expire),
  TLS only.
- The bucket's name is guessable (`<stack>-artifacts`), so anyone could create it first in their
  own account. Every S3 call names the caller's account (STS `GetCallerIdentity`, which needs no
  permission) as `ExpectedBucketOwner`: S3 answers 403 for a bucket owned by anyone else.

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
# As terraform/variables.tf: versions overwritten or deleted expire after this many days; under
# studies/ sooner, because checkpoints are rewritten every epoch.
NONCURRENT_VERSION_DAYS = 30
CHECKPOINT_NONCURRENT_DAYS = 7
# As terraform/variables.tf (`queue_retention_days`): shorter than the DLQ's 14 days, because a
# message redriven there keeps its first send time and would expire in the DLQ the sooner. Older
# messages are dropped silently: the reconciler sends a fresh one before (`shared.reconcile`).
QUEUE_RETENTION_S = 13 * 24 * 3600  # as long as SQS allows while staying shorter than the DLQ's


# The dataset sync sends 8 files at a time (shared.datasets.sync), each in up to 8 parts at
# once (aws_s3.DEFAULT_TRANSFER.max_concurrency): 64 connections, so that none waits for one.
S3_POOL_CONNECTIONS = 8 * 8


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
    """{"sqs", "dynamodb", "s3", "sts"} clients for `config` (region from the config or the session)."""
    session = _session(config, session)
    region = _region(config, session)
    return {
        "sqs": session.client("sqs", region_name=region, config=_client_config(session)),
        "dynamodb": session.client("dynamodb", region_name=region, config=_client_config(session)),
        "s3": session.client("s3", region_name=region, config=_client_config(session, pool=S3_POOL_CONNECTIONS)),
        "sts": session.client("sts", region_name=region, config=_client_config(session)),
    }


def open_aws(config: BackendConfig, session: Any = None, expected_owner: str | None = None) -> Backend:
    """The AWS backend of `config`, its resources checked. `expected_owner` (an account id) is the
    bucket's owner to insist on; None: the account of these credentials."""
    clients = aws_clients(config, session)
    sqs, dynamodb, s3 = clients["sqs"], clients["dynamodb"], clients["s3"]
    region = sqs.meta.region_name
    owner = expected_owner or caller_account(clients["sts"], region)
    queue_url = _queue_url(sqs, config.resolved_queue_name, region)
    dlq_url = _queue_url(sqs, config.resolved_dlq_name, region)
    _check_table(dynamodb, config.resolved_table_name, region)
    _check_bucket(s3, config.resolved_bucket, region, owner)
    return Backend(
        queue=SqsJobQueue(sqs, queue_url, dlq_url, config.lease_s, config.max_receives),
        store=DynamoJobStore(dynamodb, config.resolved_table_name),
        artifacts=S3ArtifactStore(s3, config.resolved_bucket, expected_owner=owner),
        name="aws",
    )


def caller_account(sts: Any, region: str) -> str:
    """The account id of the credentials in use (allowed to every principal: no IAM permission)."""
    try:
        return str(sts.get_caller_identity()["Account"])
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, "STS caller identity", "GetCallerIdentity", region) from exc


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


def _check_bucket(s3: Any, name: str, region: str, owner: str) -> None:
    try:
        s3.head_bucket(Bucket=name, ExpectedBucketOwner=owner)
    except ClientError as exc:
        code = error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise ResourceMissingError(missing_message("S3 bucket", name, None)) from None
        if code in ("403", "AccessDenied"):
            raise FatalError(
                f"S3 bucket '{name}' exists but these credentials may not use it (403): "
                f"it may belong to an account other than {owner}; set SPOTSWEEP_BUCKET"
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
    owner = caller_account(clients["sts"], region)
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
        lines.append(_ensure_bucket(s3, config.resolved_bucket, region, owner))
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


def _ensure_bucket(s3: Any, name: str, region: str, owner: str) -> str:
    try:
        _check_bucket(s3, name, region, owner)
    except ResourceMissingError:
        pass
    else:  # someone's bucket (Terraform's, an older init's): its settings are theirs
        versioning = s3.get_bucket_versioning(Bucket=name, ExpectedBucketOwner=owner).get("Status")
        note = "" if versioning == "Enabled" else " (warning: versioning is off; left as it is)"
        return f"found S3 bucket {name}{note}"
    kwargs: dict[str, Any] = {"Bucket": name}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as exc:
        if error_code(exc) != "BucketAlreadyOwnedByYou":
            raise
    s3.get_waiter("bucket_exists").wait(
        Bucket=name, ExpectedBucketOwner=owner, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
    )
    _configure_bucket(s3, name, owner)
    return f"created S3 bucket {name} (public access blocked, SSE-S3, versioned, TLS only)"


def _configure_bucket(s3: Any, name: str, owner: str) -> None:
    """Private, encrypted, versioned and TLS only, in that order: the public access block exists
    before any policy is set (as in terraform/bucket.tf)."""
    mine = {"Bucket": name, "ExpectedBucketOwner": owner}
    s3.put_public_access_block(
        **mine,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        **mine,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]
        },
    )
    s3.put_bucket_versioning(**mine, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_lifecycle_configuration(**mine, LifecycleConfiguration={"Rules": _lifecycle_rules()})
    s3.put_bucket_policy(**mine, Policy=json.dumps(tls_only_policy(name)))


def _lifecycle_rules() -> list[dict[str, Any]]:
    """Versioning keeps every overwritten checkpoint: expire the old versions (the shorter of two
    overlapping rules wins, so studies/ keeps them a week)."""
    return [
        {
            "ID": "expire-noncurrent-versions", "Status": "Enabled", "Filter": {},
            "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_VERSION_DAYS},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
        },
        {
            "ID": "expire-old-study-checkpoints", "Status": "Enabled", "Filter": {"Prefix": "studies/"},
            "NoncurrentVersionExpiration": {"NoncurrentDays": CHECKPOINT_NONCURRENT_DAYS},
        },
    ]


def tls_only_policy(bucket: str) -> dict[str, Any]:
    """The bucket policy that refuses every request not made over TLS (terraform/bucket.tf)."""
    arn = f"arn:aws:s3:::{bucket}"
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": [arn, f"{arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }],
    }
