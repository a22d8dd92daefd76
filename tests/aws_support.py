"""AWS over real HTTP for the tests: moto's server in a subprocess, and fresh AWS backends on it.

- `moto_endpoint` (session fixture): the server's URL. One server per test process, so each
  pytest-xdist worker gets its own. Make it visible to every test with, in `tests/conftest.py`:
      from tests.aws_support import moto_endpoint  # noqa: F401
- `aws_env(endpoint)`: the environment a process needs to use that server (dummy credentials,
  region, `AWS_ENDPOINT_URL`); `aws_subprocess_env(endpoint)` is the whole environment for a
  subprocess (a worker in an end-to-end test) with any real AWS settings removed.
- `fresh_aws_backend(request, lease_s, max_receives)`: yields a Backend on uniquely named
  resources created with `shared.backends.aws.provision`, and deletes them afterwards.
- `CallCounter(*clients)`: counts API calls with botocore's event hooks (cost assertions).

Nothing here mocks boto3: every call is an HTTP request to the server.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.ports import Backend
from shared.config import BackendConfig

REGION = "us-east-1"
START_TIMEOUT_S = 60.0


def aws_env(endpoint: str) -> dict[str, str]:
    """Environment variables that point boto3 at `endpoint` with dummy credentials."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def aws_subprocess_env(endpoint: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) without any AWS_* setting, plus `aws_env`."""
    base = dict(os.environ if base is None else base)
    clean = {k: v for k, v in base.items() if not k.startswith("AWS_")}
    return {**clean, **aws_env(endpoint)}


# moto's own server (`python -m moto.server`: its DomainDispatcherApplication on werkzeug, threaded),
# with two differences:
# 1. Requests to every service but SQS are served one at a time. moto evaluates a DynamoDB
#    ConditionExpression or an S3 If-None-Match and then writes, without a lock, so two concurrent
#    conditional writes can both succeed there; on AWS each is atomic. Serializing them makes the
#    emulator as strict as AWS, so that the race tests test our conditions rather than moto's
#    threading. SQS stays concurrent: a long poll must not hold up everyone else.
# 2. TransactWriteItems takes its rollback backup of the table once per transaction instead of once
#    per item (moto 5 deep-copies the whole table for every item: O(items x table size), minutes for
#    a 2,000-job submission). The backups are taken before anything is written, so one copy is the
#    same backup.
# 3. Policy conditions: requests count as made over TLS (`aws:SecureTransport` is true), as every
#    request to AWS's endpoints is (the server speaks plain HTTP only because it is local); `Bool`
#    conditions are evaluated (moto 5 knows only StringEquals and takes any other as true); and a
#    statement whose condition does not hold does not apply, as on AWS (moto 5 makes it a Deny).
#    Without these, the TLS-only bucket policy of `submit init` denies every object request here.
# 4. With IAM enforced (INITIAL_NO_AUTH_ACTION_COUNT set: `MotoServer(no_auth_requests=N)`), a
#    DynamoDB request is checked against its table's ARN (index: table/T/index/I) as on AWS;
#    moto 5 checks every DynamoDB call against "*", which no policy scoped to a table matches;
#    likewise GetQueueUrl is checked against its queue's ARN (moto 5: "*").
SERVER_CODE = r"""
import copy, json, os, re, sys, threading, types
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
import moto.dynamodb.models as dynamodb_models
import moto.iam.access_control as access_control
import moto.iam.policy_conditions as policy_conditions

policy_conditions.CONDITION_OPERATIONS["Bool"] = policy_conditions.string_equals_operation
_statement_permitted = access_control.IAMPolicyStatement.is_action_permitted

def statement_permitted(self, action, resource="*", principal=None, incoming_condition_values=None):
    incoming_condition_values = {"aws:SecureTransport": "true", **(incoming_condition_values or {})}
    if not self._check_conditions(incoming_condition_values):
        return access_control.PermissionResult.NEUTRAL
    return _statement_permitted(self, action, resource, principal, incoming_condition_values)

access_control.IAMPolicyStatement.is_action_permitted = statement_permitted

_transact = dynamodb_models.DynamoDBBackend.transact_write_items

def transact_write_items(self, transact_items):
    tables, backups = list(self.tables.values()), {}

    def deepcopy(obj, memo=None):
        if any(obj is table for table in tables):
            if id(obj) not in backups:
                backups[id(obj)] = copy.deepcopy(obj, memo)
            return backups[id(obj)]
        return copy.deepcopy(obj, memo)

    dynamodb_models.copy = types.SimpleNamespace(deepcopy=deepcopy)
    try:
        return _transact(self, transact_items)
    finally:
        dynamodb_models.copy = copy

if hasattr(dynamodb_models, "copy"):
    dynamodb_models.DynamoDBBackend.transact_write_items = transact_write_items

def table_and_index(body):
    if body.get("TableName"):
        return body["TableName"], body.get("IndexName")
    for item in body.get("TransactItems", []):  # one table per transaction in this project
        for part in item.values():
            return part.get("TableName"), None
    for name in body.get("RequestItems", {}):  # BatchWriteItem / BatchGetItem
        return name, None
    return None, None

def dynamodb_resource(self):
    body = self.body if isinstance(self.body, dict) else json.loads(self.body or "{}")
    table, index = table_and_index(body)
    if not table:
        return "*"
    arn = f"arn:aws:dynamodb:{self.region}:{self.current_account}:table/{table}"
    return f"{arn}/index/{index}" if index else arn

def sqs_resource(self):
    if self._get_action() == "GetQueueUrl":  # named by QueueName, which moto 5 does not look at
        try:
            return self.sqs_backend.get_queue(self._get_param("QueueName")).queue_arn
        except Exception:
            return "*"
    return _sqs_resource(self)

if os.environ.get("INITIAL_NO_AUTH_ACTION_COUNT"):
    import moto.dynamodb.responses as dynamodb_responses
    import moto.sqs.responses as sqs_responses
    dynamodb_responses.DynamoHandler._determine_resource = dynamodb_resource
    _sqs_resource = sqs_responses.SQSResponse._determine_resource
    sqs_responses.SQSResponse._determine_resource = sqs_resource

app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()
scope = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/")

def serialized(environ, start_response):
    match = scope.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match and match.group(1) == "sqs":
        return app(environ, start_response)
    with lock:
        return list(app(environ, start_response))

run_simple(sys.argv[1], int(sys.argv[2]), serialized, threaded=True, request_handler=MotoRequestHandler)
"""


class MotoServer:
    """moto's server (see SERVER_CODE) in a subprocess on 127.0.0.1 and a free port."""

    def __init__(self, no_auth_requests: int | None = None) -> None:
        """`no_auth_requests`: None serves everyone (the default); N enforces IAM after the first
        N requests (moto's INITIAL_NO_AUTH_ACTION_COUNT): every later request must be signed by
        an IAM user's access key and be allowed by that user's policies."""
        self.no_auth_requests = no_auth_requests
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self._log = tempfile.NamedTemporaryFile(prefix="moto-server-", suffix=".log", delete=False)

    def start(self) -> MotoServer:
        last_error = ""
        for _ in range(3):  # the free port may be taken between choosing and binding it
            port = _free_port()
            self.endpoint = f"http://127.0.0.1:{port}"
            self.process = subprocess.Popen(
                [sys.executable, "-c", SERVER_CODE, "127.0.0.1", str(port)],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self._server_env(port),
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    last_error = f"moto server exited with {self.process.returncode}"
                    break
                if _answers(self.endpoint):
                    return self
                time.sleep(0.1)
            else:
                last_error = f"moto server did not answer within {START_TIMEOUT_S:.0f}s"
            self.stop()
        log = Path(self._log.name).read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{last_error}; its log ({self._log.name}):\n{log}")

    def _server_env(self, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        if self.no_auth_requests is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.no_auth_requests)
        return {**env, "MOTO_PORT": str(port)}

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2) as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


_server: MotoServer | None = None
_server_lock = threading.Lock()


def moto_server() -> MotoServer:
    """This process's moto server, started on first use (stopped at exit or session end)."""
    global _server
    with _server_lock:
        if _server is None or _server.process is None or _server.process.poll() is not None:
            _server = MotoServer().start()
            atexit.register(_server.stop)
        return _server


def stop_moto_server() -> None:
    global _server
    with _server_lock:
        if _server is not None:
            _server.stop()
            _server = None


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The URL of this test process's moto server (a subprocess, one per xdist worker)."""
    yield moto_server().endpoint
    stop_moto_server()


def endpoint_for(request: pytest.FixtureRequest) -> str:
    try:
        return request.getfixturevalue("moto_endpoint")
    except pytest.FixtureLookupError:  # tests/conftest.py does not import the fixture (yet)
        return moto_server().endpoint


def use_moto_env(request: pytest.FixtureRequest, endpoint: str) -> None:
    """Point this test's process environment at `endpoint` (undone after the test)."""
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in aws_env(endpoint).items():
        monkeypatch.setenv(name, value)


def unique_stack(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def aws_config(stack: str, lease_s: float = 300.0, max_receives: int = 5, **fields: Any) -> BackendConfig:
    return BackendConfig(
        backend="aws", stack=stack, region=REGION, lease_s=lease_s, max_receives=max_receives, **fields
    )


def fresh_aws_backend(request: pytest.FixtureRequest, lease_s: float, max_receives: int) -> Iterator[Backend]:
    """A Backend on new, uniquely named resources on moto's server; removed after the test."""
    import boto3

    from shared.backends.aws import open_aws, provision

    endpoint = endpoint_for(request)
    use_moto_env(request, endpoint)
    config = aws_config(unique_stack(), lease_s=lease_s, max_receives=max_receives)
    session = boto3.Session(region_name=REGION)
    provision(config, session)
    backend = open_aws(config, session)
    try:
        yield backend
    finally:
        delete_resources(config, session)


def delete_resources(config: BackendConfig, session: Any) -> None:
    """Best effort: remove the stack's queues, table and bucket (keeps moto's memory small)."""
    from shared.backends.aws import aws_clients

    clients = aws_clients(config, session)
    sqs, dynamodb, s3 = clients["sqs"], clients["dynamodb"], clients["s3"]
    for name in (config.resolved_queue_name, config.resolved_dlq_name):
        try:
            sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"])
        except Exception:  # noqa: BLE001
            pass
    try:
        dynamodb.delete_table(TableName=config.resolved_table_name)
    except Exception:  # noqa: BLE001
        pass
    try:
        # the bucket is versioned (`provision`): every version and delete marker must go
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=config.resolved_bucket):
            versions = page.get("Versions", []) + page.get("DeleteMarkers", [])
            keys = [{"Key": o["Key"], "VersionId": o["VersionId"]} for o in versions]
            if keys:
                s3.delete_objects(Bucket=config.resolved_bucket, Delete={"Objects": keys})
        s3.delete_bucket(Bucket=config.resolved_bucket)
    except Exception:  # noqa: BLE001
        pass


# --- counting API calls ---

DYNAMO_WRITES = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
)
DYNAMO_READS = frozenset({"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"})


class CallCounter:
    """Counts API calls (`before-call`, once per operation) and HTTP attempts (`before-send`,
    retries included) made by the given clients, by (service, operation)."""

    def __init__(self, *clients: Any) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.attempts: Counter[str] = Counter()
        for client in clients:
            client.meta.events.register("before-call", self._on_call)
            client.meta.events.register("before-send", self._on_send)

    def _on_call(self, event_name: str, **_: Any) -> None:
        _, service, operation = event_name.split(".", 2)
        self.calls[(service, operation)] += 1

    def _on_send(self, event_name: str, **_: Any) -> None:
        self.attempts[event_name.split(".", 2)[1]] += 1

    def reset(self) -> None:
        self.calls.clear()
        self.attempts.clear()

    def count(self, service: str, operations: frozenset[str] | None = None) -> int:
        return sum(
            n for (svc, op), n in self.calls.items() if svc == service and (operations is None or op in operations)
        )

    def operations(self, service: str) -> dict[str, int]:
        return {op: n for (svc, op), n in sorted(self.calls.items()) if svc == service}
