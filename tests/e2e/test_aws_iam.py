"""Least privilege proven by enforcement: a study on moto's server with IAM enforced.

The server checks every request after the first three (which create an administrator) against
the caller's IAM policies. The worker runs with a user whose policy is rendered from
terraform/iam.tf (`data.aws_iam_policy_document.worker`), the submitter with one whose policy
is the `submitter` document Terraform outputs for its users (tests/iam_render.py). A study with
two epochs per job (each epoch deletes the previous epoch's state), a fine-tune, an evaluation,
export and predict pass under those policies, and a sample of calls outside them is refused.

SPOTSWEEP_TEST_IAM_TF=/path/to/iam.tf renders the worker's policy from another iam.tf (e.g.
`git show 760fcc7:terraform/iam.tf`, the policy without s3:DeleteObject, which fails here).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from shared.backends.aws import open_aws
from shared.status import JobStatus
from tests.aws_support import REGION, MotoServer, aws_config, aws_subprocess_env, unique_stack
from tests.e2e.conftest import env_for, start_workers, submit, submit_json, wait_all
from tests.e2e.test_local_study import write_study
from tests.iam_render import TF_DIR, for_moto, render_policy

pytestmark = [pytest.mark.slow, pytest.mark.aws]

ADMIN_SETUP_REQUESTS = 3  # CreateUser, PutUserPolicy, CreateAccessKey: then IAM is enforced
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def _iam_user(iam: Any, name: str, policy: dict[str, Any]) -> dict[str, str]:
    """A new IAM user with `policy` inline; its access key as environment variables."""
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


@pytest.fixture(scope="module")
def enforcing() -> Iterator[tuple[str, dict[str, str]]]:
    """An IAM-enforcing moto server of its own, and an administrator's keys on it."""
    server = MotoServer(no_auth_requests=ADMIN_SETUP_REQUESTS).start()
    try:
        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name=REGION,
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        yield server.endpoint, _iam_user(iam, "admin", ALLOW_ALL)
    finally:
        server.stop()


def _session(keys: dict[str, str]) -> boto3.Session:
    return boto3.Session(region_name=REGION, aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"])


def _stack_arns(endpoint: str, admin: dict[str, str], stack: str) -> dict[str, str]:
    """The ARN of each resource iam.tf refers to, as created on moto by `submit init`."""
    config, session = aws_config(stack), _session(admin)
    sqs = session.client("sqs", endpoint_url=endpoint)
    dynamodb = session.client("dynamodb", endpoint_url=endpoint)

    def queue_arn(name: str) -> str:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    return {
        "aws_sqs_queue.jobs.arn": queue_arn(config.resolved_queue_name),
        "aws_sqs_queue.dlq.arn": queue_arn(config.resolved_dlq_name),
        "aws_dynamodb_table.jobs.arn": dynamodb.describe_table(TableName=config.resolved_table_name)["Table"][
            "TableArn"
        ],
        "aws_s3_bucket.artifacts.arn": f"arn:aws:s3:::{config.resolved_bucket}",
        # no autoscaling group on moto in this test: the worker runs outside one
        "aws_autoscaling_group.workers.arn": f"arn:aws:autoscaling:{REGION}:123456789012:autoScalingGroup:*:"
        f"autoScalingGroupName/{stack}-workers",
    }


def _worker_tf_dir(tmp_path: Path) -> Path:
    """terraform/, or a directory holding only the iam.tf named by SPOTSWEEP_TEST_IAM_TF."""
    other = os.environ.get("SPOTSWEEP_TEST_IAM_TF")
    if not other:
        return TF_DIR
    directory = tmp_path / "other-tf"
    directory.mkdir()
    shutil.copy(other, directory / "iam.tf")
    return directory


@pytest.fixture
def stack_users(tmp_path, enforcing) -> dict[str, Any]:
    endpoint, admin = enforcing
    stack = unique_stack("iam")
    base = {**env_for(tmp_path / "home"), **aws_subprocess_env(endpoint, {}), "SPOTSWEEP_BACKEND": "aws",
            "SPOTSWEEP_STACK": stack, "SPOTSWEEP_REGION": REGION}
    base = {k: v for k, v in base.items() if not (k.startswith("AWS_") and k not in aws_subprocess_env(endpoint, {}))}
    assert "created" in submit({**base, **admin}, "init").stdout
    arns = _stack_arns(endpoint, admin, stack)
    iam = _session(admin).client("iam", endpoint_url=endpoint)
    worker_policy = for_moto(render_policy("worker", arns, _worker_tf_dir(tmp_path)))
    submitter_policy = for_moto(render_policy("submitter", arns))
    return {
        "stack": stack, "bucket": aws_config(stack).resolved_bucket, "endpoint": endpoint, "admin": admin,
        "worker": {**base, **_iam_user(iam, f"{stack}-worker", worker_policy)},
        "submitter": {**base, **_iam_user(iam, f"{stack}-submitter", submitter_policy)},
    }


def _run_workers(env: dict[str, str], count: int, log_dir: Path) -> None:
    codes = wait_all(start_workers(env, count, "--until-empty", log_dir=log_dir), timeout_s=600)
    assert codes == [0] * count, "\n".join(p.read_text()[-3000:] for p in sorted(log_dir.iterdir()))


def test_study_under_the_terraform_policies(tmp_path, tiny_dataset, stack_users):
    worker, submitter, bucket = stack_users["worker"], stack_users["submitter"], stack_users["bucket"]
    submit(submitter, "dataset", "upload", str(tiny_dataset), f"s3://{bucket}/datasets/tiny")
    study_file = write_study(tmp_path / "sweep.json", "placeholder")
    study = json.loads(study_file.read_text())
    study["dataset"] = f"s3://{bucket}/datasets/tiny"
    # 3 transfer-learning jobs of 2 epochs on one frozen base: two workers race to fill the feature
    # cache (the loser deletes its uploads), and epoch 2 deletes epoch 1's saved state
    study["parameters"]["architecture"] = ["mobilenet_v2"]
    study_file.write_text(json.dumps(study))
    assert submit_json(submitter, "study", str(study_file))["created"] == 3
    _run_workers(worker, 2, tmp_path / "logs-train")

    rows = submit_json(submitter, "leaderboard")["rows"]
    assert len(rows) == 3 and {r["status"] for r in rows} == {"SUCCEEDED"}
    assert "1 finetune jobs enqueued" in submit(submitter, "finetune", "--top", "1").stdout
    _run_workers(worker, 1, tmp_path / "logs-finetune")
    assert "1 evaluate jobs enqueued" in submit(submitter, "evaluate", "--top", "1").stdout
    _run_workers(worker, 1, tmp_path / "logs-evaluate")

    status = submit_json(submitter, "status")
    assert status, status
    best = rows[0]["job_id"]
    submit(submitter, "export", best, "--out", str(tmp_path / "model.keras"))
    assert (tmp_path / "model.keras").stat().st_size > 0
    image = next(p for p in sorted(tiny_dataset.rglob("*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    assert submit_json(submitter, "predict", best, str(image))
    submit(submitter, "report", "--out", str(tmp_path / "report"))
    assert (tmp_path / "report" / "report.html").is_file()
    # the control commands on a finished study: nothing to do, but every read they make is allowed
    assert "error:" not in submit(submitter, "repair").stdout  # reads the dead-letter queue too
    assert "0 jobs re-enqueued" in submit(submitter, "retry").stdout
    submit(submitter, "cancel")
    _assert_outside_the_policies_is_refused(stack_users, rows[0]["checkpoint"])


def _client(env: dict[str, str], service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def _refused(action: str, call: Any, **kwargs: Any) -> None:
    """`call` is refused for want of `action` (moto answers DynamoDB's refusals in XML, which
    botocore cannot parse for a JSON service: the status and the message say it then)."""
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    error = caught.value
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403, error
    assert error.response["Error"]["Code"] == "AccessDenied" or f"not authorized to perform: {action}" in str(error)


def _assert_outside_the_policies_is_refused(users: dict[str, Any], checkpoint_key: str) -> None:
    endpoint, bucket, config = users["endpoint"], users["bucket"], aws_config(users["stack"])
    worker_s3 = _client(users["worker"], "s3", endpoint)
    dataset_key = next(o["Key"] for o in worker_s3.list_objects_v2(Bucket=bucket, Prefix="datasets/")["Contents"])
    # datasets are read-only to workers; the table is not theirs to drop
    _refused("s3:DeleteObject", worker_s3.delete_object, Bucket=bucket, Key=dataset_key)
    _refused("s3:PutObject", worker_s3.put_object, Bucket=bucket, Key=dataset_key, Body=b"x")
    worker_dynamodb = _client(users["worker"], "dynamodb", endpoint)
    _refused("dynamodb:DeleteTable", worker_dynamodb.delete_table, TableName=config.resolved_table_name)
    # jobs' artifacts are the workers' to write; the queue is not the submitter's to purge
    submitter_s3 = _client(users["submitter"], "s3", endpoint)
    _refused("s3:DeleteObject", submitter_s3.delete_object, Bucket=bucket, Key=checkpoint_key)
    _refused("s3:PutObject", submitter_s3.put_object, Bucket=bucket, Key=checkpoint_key, Body=b"x")
    submitter_sqs = _client(users["submitter"], "sqs", endpoint)
    queue_url = submitter_sqs.get_queue_url(QueueName=config.resolved_queue_name)["QueueUrl"]
    _refused("sqs:PurgeQueue", submitter_sqs.purge_queue, QueueUrl=queue_url)


def test_preemption_and_resume_under_the_worker_policy(tmp_path, stack_users, tiny_dataset, monkeypatch):
    """A spot notice mid-job: the worker checkpoints and puts the job back (its own SendMessage),
    and a second worker resumes it from the checkpoint, both with the rendered worker policy."""
    from tests.e2e.test_preemption import DEADLINE_S, epochs_by_attempt, only_job, tail, wait_for
    from tests.e2e.test_preemption import write_study as write_long_study
    from tests.fake_imds import FakeImds

    worker, submitter, bucket = stack_users["worker"], stack_users["submitter"], stack_users["bucket"]
    submit(submitter, "dataset", "upload", str(tiny_dataset), f"s3://{bucket}/datasets/tiny")
    study_file = write_long_study(tmp_path / "long.json", Path("placeholder"))
    study_file.write_text(study_file.read_text().replace('"placeholder"', f'"s3://{bucket}/datasets/tiny"'))
    submit(submitter, "study", str(study_file))
    for name, value in aws_subprocess_env(stack_users["endpoint"], {}).items():
        monkeypatch.setenv(name, value)
    backend = open_aws(aws_config(stack_users["stack"]), _session(stack_users["admin"]))
    job, logs = only_job(backend), tmp_path / "logs"

    with FakeImds() as imds:
        env = {**worker, "SPOTSWEEP_METADATA_URL": imds.url, "SPOTSWEEP_SPOT_POLL_S": "0.5"}
        [first] = start_workers(env, 1, "--until-empty", log_dir=logs / "first")
        try:
            wait_for(lambda: epochs_by_attempt(backend, job), 180, "the first epoch", [first], logs / "first")
            imds.arm_spot_notice()
            assert first.wait(timeout=DEADLINE_S) == 0, tail(logs / "first")
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    record = backend.store.get_job(job.study_id, job.job_id)
    assert record.status == JobStatus.QUEUED and record.preemptions == 1, record

    _run_workers(worker, 1, logs / "second")
    record = backend.store.get_job(job.study_id, job.job_id)
    assert record.status == JobStatus.SUCCEEDED and record.attempt == 2 and record.preemptions == 1, record
