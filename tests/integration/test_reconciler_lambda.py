"""The scheduled reconciler (submitter.reconciler_lambda) against moto's server, over HTTP.

A stack made by `provision` (as `submit init`), the function's settings in the environment as
Terraform sets them, and the handler invoked in this process as Lambda would: a study whose
messages were purged has them again after one run, and a second run within the interval does
nothing (the store lock). The calls a run makes are read with botocore's event hooks and held
against the role terraform/reconciler.tf grants: every call is allowed there, on the right queue,
and every grant is used. The slow test builds the real function zip (pip, for the Lambda
platform) and runs the handler from it with nothing else on the path.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shared.backends.aws import open_aws, provision
from shared.config import BackendConfig
from shared.followups import CANCELLED_STAGE
from shared.jobs import JobMessage, JobRecord, StudyRecord
from shared.ports import Backend
from shared.status import JobStatus
from shared.study import StudySpec, expand, parse_study
from shared.submission import enqueue_records, submit_jobs
from submitter import reconciler_lambda
from tests.aws_support import aws_config, aws_env, delete_resources, endpoint_for, unique_stack, use_moto_env

pytestmark = pytest.mark.aws

REPO = Path(__file__).resolve().parents[2]
LEASE_S = 60.0
INTERVAL_S = 300.0
PAST_S = 600.0  # the studies were submitted this long ago: past every grace period


@dataclass
class Stack:
    config: BackendConfig
    backend: Backend  # the test's own view of the stack (open_aws)
    endpoint: str


@pytest.fixture
def stack(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """A provisioned stack on moto's server and the function's environment for it."""
    import boto3

    endpoint = endpoint_for(request)
    use_moto_env(request, endpoint)
    config = aws_config(unique_stack("lam"), lease_s=LEASE_S)
    session = boto3.Session(region_name=config.region)
    provision(config, session)
    for name in [n for n in os.environ if n.startswith("SPOTSWEEP_")]:
        monkeypatch.delenv(name)
    for name, value in function_env(config).items():
        monkeypatch.setenv(name, value)
    try:
        yield Stack(config, open_aws(config, session), endpoint)
    finally:
        delete_resources(config, session)


def function_env(config: BackendConfig) -> dict[str, str]:
    """The variables terraform/reconciler.tf gives the function (the bucket is never used)."""
    return {
        "SPOTSWEEP_BACKEND": "aws",
        "SPOTSWEEP_STACK": config.stack,
        "SPOTSWEEP_REGION": str(config.region),
        "SPOTSWEEP_QUEUE_NAME": config.resolved_queue_name,
        "SPOTSWEEP_DLQ_NAME": config.resolved_dlq_name,
        "SPOTSWEEP_TABLE_NAME": config.resolved_table_name,
        "SPOTSWEEP_LEASE_S": str(int(config.lease_s)),
        "SPOTSWEEP_MAX_RECEIVES": str(config.max_receives),
        "SPOTSWEEP_RECONCILE_INTERVAL_S": str(int(INTERVAL_S)),
    }


def study(name: str, optimizers: int, **extra: Any) -> StudySpec:
    return parse_study(json.dumps({
        "name": name, "dataset": "s3://bucket/datasets/tiny", "image_size": 32,
        "parameters": {"architecture": ["benchmark"], "weights": [None],
                       "optimizer": [{"name": "sgd", "learning_rate": 0.01 * (i + 1)} for i in range(optimizers)]},
        "training": {"epochs": 1}, **extra,
    }))


def submitted_long_ago(backend: Backend, spec: StudySpec) -> list[str]:
    """Record the study and enqueue its jobs as `submit study` did PAST_S ago; its job ids."""
    past = time.time() - PAST_S
    jobs = list(expand(spec))
    backend.store.put_study(StudyRecord(study_id=spec.study_id, name=spec.name, created_at=past,
                                        spec=spec.model_dump(mode="json"), job_count=len(jobs)))
    submit_jobs(backend.store, backend.queue, spec.study_id, jobs, now=past)
    return sorted(job_id for job_id, _ in jobs)


def purge(backend: Backend) -> None:
    backend.queue.client.purge_queue(QueueUrl=backend.queue.queue_url)
    assert backend.queue.counts().backlog == 0


def invoke() -> dict[str, Any]:
    """The handler as Lambda calls it: a scheduled event and a context with a request id."""
    event = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
    return reconciler_lambda.handler(event, SimpleNamespace(aws_request_id=f"req-{time.monotonic_ns()}"))


# --- a purged queue with the fleet at zero ---


def test_one_run_sends_the_purged_studys_messages_and_a_second_within_the_interval_does_nothing(stack, capsys):
    spec = study("purged", optimizers=3)
    job_ids = submitted_long_ago(stack.backend, spec)
    purge(stack.backend)  # backlog 0: the autoscaling group would never start a worker
    before = time.time()

    first = invoke()

    assert first["ran"] and first["changed"]
    assert sorted(first["report"]["resent"]["ids"]) == job_ids
    assert stack.backend.queue.counts().backlog == len(job_ids)  # the group scales out on these
    records = stack.backend.store.list_jobs(spec.study_id)
    assert all(r.status is JobStatus.QUEUED and r.enqueued_at is not None and r.enqueued_at >= before - 1 for r in records)
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert logged == [first]  # one JSON line per run, the returned document

    second = invoke()

    assert second == {**second, "ran": False, "changed": False, "report": None, "event": "not_due"}
    assert stack.backend.queue.counts().backlog == len(job_ids)  # nothing sent twice
    assert [r.enqueued_at for r in stack.backend.store.list_jobs(spec.study_id)] == [r.enqueued_at for r in records]


def test_a_worker_that_reconciled_within_the_interval_holds_the_lock(stack):
    spec = study("held", optimizers=2)
    submitted_long_ago(stack.backend, spec)
    purge(stack.backend)
    assert stack.backend.store.acquire_lock("reconciler", "worker-1", INTERVAL_S, time.time())  # an idle worker's run
    result = invoke()
    assert not result["ran"] and stack.backend.queue.counts().backlog == 0  # left to the worker's run


def test_a_missing_queue_is_one_logged_line_and_an_error(stack, capsys, monkeypatch):
    monkeypatch.setenv("SPOTSWEEP_QUEUE_NAME", "no-such-queue")
    with pytest.raises(Exception, match="no-such-queue"):
        invoke()
    [line] = capsys.readouterr().out.splitlines()
    logged = json.loads(line)
    assert logged["event"] == "reconcile_failed" and "no-such-queue" in logged["error"]


def test_the_function_refuses_the_local_backend(monkeypatch, capsys):
    monkeypatch.setenv("SPOTSWEEP_BACKEND", "local")
    with pytest.raises(ValueError, match="backend"):
        invoke()
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["event"] == "reconcile_failed" and "backend" in json.loads(line)["error"]


# --- the calls a run makes are exactly what the function's role grants ---

# The IAM action AWS authorizes for each API operation the reconciler makes: a batch call as its
# single action, a transaction as the actions of its items (TRANSACT_ITEM).
IAM_ACTION = {
    "GetQueueUrl": "sqs:GetQueueUrl",
    "GetQueueAttributes": "sqs:GetQueueAttributes",
    "ReceiveMessage": "sqs:ReceiveMessage",
    "SendMessageBatch": "sqs:SendMessage",
    "DeleteMessageBatch": "sqs:DeleteMessage",
    "GetItem": "dynamodb:GetItem",
    "PutItem": "dynamodb:PutItem",
    "UpdateItem": "dynamodb:UpdateItem",
    "Query": "dynamodb:Query",
    "BatchGetItem": "dynamodb:BatchGetItem",
}
TRANSACT_ITEM = {"Put": "dynamodb:PutItem", "Update": "dynamodb:UpdateItem",
                 "ConditionCheck": "dynamodb:ConditionCheckItem", "Delete": "dynamodb:DeleteItem"}
# terraform/reconciler.tf's resource expressions -> what the test's calls name
RESOURCES = {"aws_sqs_queue.jobs.arn": "queue", "aws_sqs_queue.dlq.arn": "dlq", "aws_dynamodb_table.jobs.arn": "table"}


class CallLog:
    """(IAM action, resource) of every API call made by clients of one boto3 session."""

    def __init__(self, session: Any, config: BackendConfig) -> None:
        self.grants: set[tuple[str, str]] = set()
        self.unknown: list[str] = []
        self.names = {config.resolved_queue_name: "queue", config.resolved_dlq_name: "dlq"}
        session.events.register("before-parameter-build", self._on_call)

    def _on_call(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "TransactWriteItems":
            self.grants |= {(TRANSACT_ITEM[kind], "table") for item in params["TransactItems"] for kind in item}
        elif model.name in IAM_ACTION:
            self.grants.add((IAM_ACTION[model.name], self._resource(params)))
        else:
            self.unknown.append(model.name)

    def _resource(self, params: dict[str, Any]) -> str:
        if "TableName" in params or "RequestItems" in params:
            return "table"
        name = params.get("QueueName") or params["QueueUrl"].rstrip("/").rsplit("/", 1)[-1]
        return self.names[name]


def granted_by_terraform() -> set[tuple[str, str]]:
    """(action, resource) pairs of the reconciler's policy document in terraform/reconciler.tf."""
    text = (REPO / "terraform" / "reconciler.tf").read_text(encoding="utf-8")
    document = text.split('data "aws_iam_policy_document" "reconciler" {', 1)[1].split("\n}\n", 1)[0]
    pairs: set[tuple[str, str]] = set()
    for statement in document.split("statement {")[1:]:
        actions = re.findall(r'"([a-z0-9]+:[A-Za-z]+)"', re.search(r"actions\s*=\s*\[(.*?)\]\s*\n", statement, re.S)[1])
        resources = re.findall(r"aws_\w+\.\w+(?:\[0\])?\.arn", re.search(r"resources\s*=\s*\[(.*?)\]\s*\n", statement, re.S)[1])
        pairs |= {(a, RESOURCES.get(r, r)) for a in actions for r in resources}
    return pairs


def every_path(backend: Backend) -> dict[str, list[str]]:
    """Studies that make a run take every path of shared.reconcile: a purged study, a dead letter
    to re-drive and one at the failure limit, a lapsed lease, a cancelled study, a follow-up due."""
    past = time.time() - PAST_S
    purged = study("paths-purged", optimizers=4)
    ids = submitted_long_ago(backend, purged)
    redrive, lapsed = ids[0], ids[1]
    spec = next(iter(expand(purged)))[1]
    spent = JobRecord(study_id=purged.study_id, job_id="spent-job", spec=spec, created_at=past, failures=3)
    backend.store.create_jobs([spent])
    enqueue_records(backend.store, backend.queue, [spent], past)
    purge(backend)
    dead = [JobMessage(study_id=purged.study_id, job_id=job_id, spec=spec).to_body() for job_id in (redrive, "spent-job")]
    backend.queue.client.send_message_batch(QueueUrl=backend.queue.dlq_url, Entries=[
        {"Id": str(i), "MessageBody": body} for i, body in enumerate(dead)])
    backend.store.claim(purged.study_id, lapsed, "killed-worker", 1.0, time.time() - 120)  # long lapsed
    cancelled = study("paths-cancelled", optimizers=1)
    cancelled_ids = submitted_long_ago(backend, cancelled)
    backend.store.mark_stage(cancelled.study_id, CANCELLED_STAGE)
    finished = study("paths-followup", optimizers=1, evaluate={"top": 1})
    [trained] = submitted_long_ago(backend, finished)
    claimed = backend.store.claim(finished.study_id, trained, "worker-1", LEASE_S, time.time())
    backend.store.finish(finished.study_id, trained, claimed.attempt, JobStatus.SUCCEEDED,
                         {"metrics": {"val_accuracy": 0.9}, "checkpoint": f"studies/{finished.study_id}/best.keras"})
    return {"redriven": [redrive], "failed": ["spent-job"], "sent_lapsed": [lapsed],
            "cancelled": cancelled_ids, "advanced": [finished.study_id]}


def test_a_run_uses_exactly_the_calls_the_functions_role_grants(stack):
    import boto3

    expected = every_path(stack.backend)
    session = boto3.Session(region_name=stack.config.region)
    calls = CallLog(session, stack.config)
    settings = reconciler_lambda.ReconcilerSettings()

    result = reconciler_lambda.run_once(settings, "lambda:test", time.time(), session)

    report = result["report"]
    for action, ids in expected.items():  # the scenario took every path
        assert sorted(report[action] if action == "advanced" else report[action]["ids"]) == sorted(ids), action
    assert report["errors"]["count"] == 0
    assert calls.unknown == []
    granted = granted_by_terraform()
    logs = {(a, r) for a, r in granted if a.startswith("logs:")}  # the runtime's, not the handler's
    assert logs == {("logs:CreateLogStream", "aws_cloudwatch_log_group.reconciler[0].arn"),
                    ("logs:PutLogEvents", "aws_cloudwatch_log_group.reconciler[0].arn")}
    assert calls.grants == granted - logs


# --- the real package (slow: pip downloads the Lambda platform's wheels, or takes pip's cache) ---


def python_312() -> str | None:
    """A CPython 3.12 that runs (the Lambda runtime's version), if this machine has one."""
    candidates = [shutil.which("python3.12"), *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))]
    for candidate in filter(None, candidates):
        check = subprocess.run([candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 12)"], capture_output=True)
        if check.returncode == 0:
            return candidate
    return None


RUN_FROM_ZIP = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from submitter import reconciler_lambda
result = reconciler_lambda.handler({}, None)
assert reconciler_lambda.__file__.startswith(sys.argv[1]), reconciler_lambda.__file__
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "pandas", "numpy", "scipy", "matplotlib"})
print(json.dumps({"resent": result["report"]["resent"]["ids"], "heavy": heavy}))
"""


@pytest.mark.slow
def test_the_built_zip_runs_the_handler_with_nothing_else_on_the_path(stack, tmp_path):
    from submitter.deploy import LAMBDA_PLATFORM, build_package, check_package

    python = python_312() or sys.executable  # without a 3.12, the same build for this interpreter
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    zip_path = build_package(REPO, tmp_path / "out", python_version=version, platform=LAMBDA_PLATFORM)
    info = check_package(zip_path)
    assert info.unzipped_bytes < 100_000_000, info  # far under Lambda's 250 MB
    unpacked = tmp_path / "task"  # Lambda's /var/task
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(unpacked)
    spec = study("from-zip", optimizers=2)
    job_ids = submitted_long_ago(stack.backend, spec)
    purge(stack.backend)

    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))},
           **aws_env(stack.endpoint), **function_env(stack.config)}
    run = subprocess.run([python, "-S", "-c", RUN_FROM_ZIP, str(unpacked)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)

    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout.splitlines()[-1])
    assert sorted(outcome["resent"]) == job_ids and outcome["heavy"] == []
    assert stack.backend.queue.counts().backlog == len(job_ids)


@pytest.mark.slow
def test_submit_deploy_reconciler_uploads_the_zip_under_the_key_it_prints(stack, tmp_path):
    from submitter.deploy import check_package, package_key

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **aws_env(stack.endpoint),
           "SPOTSWEEP_BUCKET": stack.config.resolved_bucket}
    run = subprocess.run([sys.executable, "-m", "submitter.cli", "deploy", "reconciler"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)

    assert run.returncode == 0, run.stderr[-3000:]
    key = run.stdout.strip()  # stdout is the key alone: KEY=$(submit deploy reconciler)
    variables = (REPO / "terraform" / "variables.tf").read_text(encoding="utf-8")
    pattern = re.search(r'regex\("(\^deploy/[^"]+)", var\.reconciler_package_key\)', variables)[1].replace("\\\\", "\\")
    assert re.fullmatch(pattern, key), key  # what Terraform accepts as reconciler_package_key
    downloaded = tmp_path / "downloaded.zip"
    stack.backend.artifacts.client.download_file(stack.config.resolved_bucket, key, str(downloaded))
    assert package_key(downloaded, "0.1.0") == key  # the key names the content
    assert check_package(downloaded).unzipped_bytes < 100_000_000
    assert f"next: terraform apply -var reconciler_package_key={key}" in run.stderr
