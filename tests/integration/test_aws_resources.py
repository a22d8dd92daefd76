"""Opening and provisioning the AWS backend: missing resources, idempotent `provision`, errors."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from shared.backends.aws import open_aws, provision
from shared.backends.aws_errors import translate
from shared.backends.factory import open_backend
from shared.errors import FatalError, ResourceMissingError, RetryableError
from tests.aws_support import REGION, aws_config, delete_resources, endpoint_for, unique_stack, use_moto_env

pytestmark = pytest.mark.aws


@pytest.fixture
def session(request):
    use_moto_env(request, endpoint_for(request))
    return boto3.Session(region_name=REGION)


@pytest.fixture
def stack(session):
    config = aws_config(unique_stack(), lease_s=120, max_receives=4)
    provision(config, session)
    yield config
    delete_resources(config, session)


def one_line_naming(exc: BaseException, name: str) -> str:
    message = str(exc)
    assert "\n" not in message and f"'{name}'" in message, message
    return message


def test_unknown_queue_is_one_clear_line(session):
    config = aws_config(unique_stack("missing"))
    with pytest.raises(ResourceMissingError) as caught:
        open_backend(config, session)
    message = one_line_naming(caught.value, config.resolved_queue_name)
    assert message.startswith("SQS queue") and REGION in message and "submit init --backend aws" in message


@pytest.mark.parametrize(
    ("field", "kind"), [("dlq_name", "SQS queue"), ("table_name", "DynamoDB table"), ("bucket", "S3 bucket")]
)
def test_unknown_dlq_table_or_bucket_is_one_clear_line(session, stack, field, kind):
    name = f"nope-{unique_stack()}"
    config = stack.model_copy(update={field: name})
    with pytest.raises(ResourceMissingError) as caught:
        open_aws(config, session)
    assert one_line_naming(caught.value, name).startswith(kind)


def test_a_bucket_deleted_under_a_running_backend_is_named(session, stack):
    backend = open_aws(stack, session)
    backend.artifacts.client.delete_bucket(Bucket=stack.resolved_bucket)
    with pytest.raises(ResourceMissingError) as caught:
        backend.artifacts.get_bytes("x.txt")
    one_line_naming(caught.value, stack.resolved_bucket)


def test_provision_creates_then_finds_and_configures_everything(session):
    config = aws_config(unique_stack(), lease_s=90.5, max_receives=4)
    try:
        first = provision(config, session)
        assert [line.split()[0] for line in first] == ["created"] * 4, first
        second = provision(config, session)
        assert [line.split()[0] for line in second] == ["found"] * 4, second
        assert all("warning" not in line for line in second)

        backend = open_aws(config, session)
        sqs = backend.queue.client
        attributes = sqs.get_queue_attributes(QueueUrl=backend.queue.queue_url, AttributeNames=["All"])["Attributes"]
        assert attributes["VisibilityTimeout"] == "91" and attributes["ReceiveMessageWaitTimeSeconds"] == "20"
        policy = json.loads(attributes["RedrivePolicy"])
        dlq_arn = sqs.get_queue_attributes(QueueUrl=backend.queue.dlq_url, AttributeNames=["QueueArn"])
        assert int(policy["maxReceiveCount"]) == 4
        assert policy["deadLetterTargetArn"] == dlq_arn["Attributes"]["QueueArn"]

        table = backend.store.client.describe_table(TableName=config.resolved_table_name)["Table"]
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == ["job_index"]
        assert {k["AttributeName"] for k in table["KeySchema"]} == {"pk", "sk"}

        s3 = backend.artifacts.client
        block = s3.get_public_access_block(Bucket=config.resolved_bucket)["PublicAccessBlockConfiguration"]
        assert all(block.values())
        rules = s3.get_bucket_encryption(Bucket=config.resolved_bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    finally:
        delete_resources(config, session)


def test_provision_warns_when_an_existing_queue_redrives_differently(session, stack):
    lines = provision(stack.model_copy(update={"max_receives": 9}), session)
    assert "warning" in lines[1] and lines[1].startswith("found SQS queue")


def test_botocore_errors_map_onto_the_error_tree():
    def client_error(code: str, status: int = 400) -> ClientError:
        return ClientError(
            {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
        )

    assert isinstance(translate(client_error("ThrottlingException"), "DynamoDB table", "t", REGION), RetryableError)
    assert isinstance(translate(client_error("Whatever", 503), "SQS queue", "q", REGION), RetryableError)
    assert isinstance(
        translate(EndpointConnectionError(endpoint_url="http://x"), "SQS queue", "q", REGION), RetryableError
    )
    missing = translate(client_error("AWS.SimpleQueueService.NonExistentQueue"), "SQS queue", "q", REGION)
    assert isinstance(missing, ResourceMissingError) and "'q' does not exist in us-east-1" in str(missing)
    assert isinstance(translate(NoCredentialsError(), "S3 bucket", "b", None), FatalError)
    assert isinstance(translate(client_error("AccessDeniedException"), "DynamoDB table", "t", REGION), FatalError)
    validation = client_error("ValidationException")
    assert translate(validation, "DynamoDB table", "t", REGION) is validation  # a bug: left as it is
