"""terraform/reconciler.tf: the scheduled reconciler (a Lambda function), offline.

The function exists only once its package key is set; its role grants exactly the calls of
shared/reconcile.py, each on the one queue or table it is made on (the integration test
tests/integration/test_reconciler_lambda.py holds the same policy against the calls a real run
makes on moto); the schedule targets the function and only it may invoke it.
"""

from __future__ import annotations

import re

import pytest

import tfmodel
from tfmodel import blocks, default, expr, one

ENABLED = "${local.reconciler_enabled ? 1 : 0}"
RECONCILER_RESOURCES = (
    ("aws_lambda_function", "reconciler"),
    ("aws_cloudwatch_log_group", "reconciler"),
    ("aws_cloudwatch_event_rule", "reconciler"),
    ("aws_cloudwatch_event_target", "reconciler"),
    ("aws_lambda_permission", "reconciler_schedule"),
    ("aws_iam_role", "reconciler"),
    ("aws_iam_role_policy", "reconciler"),
)
# The reconciler's calls (shared/reconcile.py through the SQS and DynamoDB adapters), by statement,
# and the one resource each is made on.
RECONCILER_STATEMENTS = {
    "Queues": ({"sqs:GetQueueUrl", "sqs:GetQueueAttributes"}, {"${aws_sqs_queue.jobs.arn}", "${aws_sqs_queue.dlq.arn}"}),
    "SendJobs": ({"sqs:SendMessage"}, {"${aws_sqs_queue.jobs.arn}"}),
    "DeadLetters": ({"sqs:ReceiveMessage", "sqs:DeleteMessage"}, {"${aws_sqs_queue.dlq.arn}"}),
    "JobStore": (
        {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query", "dynamodb:BatchGetItem"},
        {"${aws_dynamodb_table.jobs.arn}"},
    ),
    "OwnLogs": ({"logs:CreateLogStream", "logs:PutLogEvents"}, {"${aws_cloudwatch_log_group.reconciler[0].arn}:*"}),
}


def _function(tf) -> dict:
    return tf.resource("aws_lambda_function", "reconciler")


def _statements(tf) -> list[dict]:
    return blocks(tf.data["aws_iam_policy_document"]["reconciler"], "statement")


def _deploy_constant(name: str) -> str:
    """A constant of submitter/deploy.py (read from the source: this venv has no project deps)."""
    text = (tfmodel.REPO / "submitter" / "deploy.py").read_text(encoding="utf-8")
    return re.search(rf'^{name} = "([^"]*)"', text, flags=re.M).group(1)


# --- created only when the package key is set ---------------------------------------------


def test_everything_of_the_reconciler_lives_in_its_file(tf):
    for rtype, name in RECONCILER_RESOURCES:
        assert tf.where[f"{rtype}.{name}"] == "reconciler.tf"
    for name in ("reconciler", "reconciler_assume"):
        assert tf.where[f"aws_iam_policy_document.{name}"] == "reconciler.tf"  # data sources


def _instances(tf, count: str, key: str) -> int:
    """How many instances a `count` expression makes for `reconciler_package_key = key`."""
    assert expr(tf.locals["reconciler_enabled"]) == 'var.reconciler_package_key != ""'
    return tfmodel.eval_simple(count, {"local.reconciler_enabled": key != ""})


@pytest.mark.parametrize(("key", "instances"), [("", 0), ("deploy/reconciler-0.1.0-0123456789ab.zip", 1)])
def test_each_resource_exists_only_when_the_package_key_is_set(tf, key, instances):
    assert default(tf, "reconciler_package_key") == ""  # the stack applies before the package exists
    for rtype, name in RECONCILER_RESOURCES:
        assert tf.resource(rtype, name)["count"] == ENABLED, f"{rtype}.{name}"
        assert _instances(tf, tf.resource(rtype, name)["count"], key) == instances
    documents = tf.data["aws_iam_policy_document"]
    assert _instances(tf, documents["reconciler"]["count"], key) == instances  # it names the log group
    assert "count" not in documents["reconciler_assume"]  # names nothing counted


def _key_pattern(tf) -> re.Pattern[str]:
    (validation,) = blocks(tf.variables["reconciler_package_key"], "validation")
    found = re.search(r'regex\("(\^deploy/.*)", var\.reconciler_package_key\)', validation["condition"])
    assert found, validation["condition"]
    return re.compile(found.group(1).replace("\\\\", "\\"))


@pytest.mark.parametrize(
    ("key", "accepted"),
    [
        ("deploy/reconciler-0.1.0-0123456789ab.zip", True),  # what submitter.deploy.package_key makes
        ("deploy/reconciler-1.2.3rc1-abcdef012345.zip", True),
        ("reconciler.zip", False),
        ("studies/x/reconciler-0.1.0.zip", False),  # workers may write there
        ("deploy/reconciler-0.1.0.tar.gz", False),
        ("deploy/reconciler-../../x.zip", False),
    ],
)
def test_package_key_validation_matches_what_deploy_prints(tf, key, accepted):
    assert _deploy_constant("KEY_PREFIX") == "deploy/"
    assert bool(_key_pattern(tf).match(key)) is accepted


# --- the function -----------------------------------------------------------------------------


def test_function_runs_the_handler_from_the_bucket_on_the_runtime_deploy_builds_for(tf):
    fn = _function(tf)
    assert fn["runtime"] == f"python{_deploy_constant('LAMBDA_PYTHON')}"
    assert fn["architectures"] == ["x86_64"] and _deploy_constant("LAMBDA_PLATFORM").endswith("_x86_64")
    module, _, function = fn["handler"].rpartition(".")
    assert fn["handler"] == "submitter.reconciler_lambda.handler"
    source = (tfmodel.REPO / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
    assert re.search(rf"^def {function}\(event: .*, context: .*\)", source, flags=re.M)
    assert _deploy_constant("HANDLER_FILE") == module.replace(".", "/") + ".py"
    assert fn["s3_bucket"] == "${aws_s3_bucket.artifacts.id}"
    assert fn["s3_key"] == "${var.reconciler_package_key}"
    assert fn["role"] == "${aws_iam_role.reconciler[0].arn}"
    assert fn["function_name"] == "${local.reconciler_name}"
    assert tf.locals["reconciler_name"] == "${var.stack}-reconciler"


def test_function_limits(tf):
    fn = _function(tf)
    assert 60 <= fn["timeout"] <= 900 and fn["timeout"] == 300
    assert fn["memory_size"] >= 128
    assert fn["reserved_concurrent_executions"] == "${var.reconciler_reserved_concurrency}"
    assert default(tf, "reconciler_reserved_concurrency") == 1
    assert "contains([-1, 1]" in one(tf.variables["reconciler_reserved_concurrency"], "validation")["condition"]


def test_function_environment_is_the_stacks_settings(tf):
    variables = one(_function(tf), "environment")["variables"]
    assert variables == {
        **tfmodel.STACK_SETTINGS,
        "SPOTSWEEP_RECONCILE_INTERVAL_S": "${var.reconcile_interval_minutes * 60}",
    }
    source = (tfmodel.REPO / "submitter" / "reconciler_lambda.py").read_text(encoding="utf-8")
    assert re.search(r"^\s+reconcile_interval_s: float", source, flags=re.M)  # SPOTSWEEP_RECONCILE_INTERVAL_S


def test_log_group_is_the_functions_with_a_retention(tf):
    group = tf.resource("aws_cloudwatch_log_group", "reconciler")
    assert group["name"] == "/aws/lambda/${local.reconciler_name}"  # the group Lambda writes to
    assert group["retention_in_days"] == "${var.reconciler_log_retention_days}"
    assert default(tf, "reconciler_log_retention_days") == 30
    assert "${aws_cloudwatch_log_group.reconciler}" in _function(tf)["depends_on"]  # before the first run


# --- the schedule -----------------------------------------------------------------------------


def _schedule(tf, minutes: int) -> str:
    match = re.fullmatch(
        r'var\.reconcile_interval_minutes == 1 \? "(?P<one>[^"]+)" : "(?P<many>[^"]+)"',
        expr(tf.locals["reconciler_schedule"]),
    )
    assert match, tf.locals["reconciler_schedule"]
    return match["one"] if minutes == 1 else match["many"].replace("${var.reconcile_interval_minutes}", str(minutes))


@pytest.mark.parametrize(("minutes", "expression"), [(1, "rate(1 minute)"), (5, "rate(5 minutes)"), (60, "rate(60 minutes)")])
def test_schedule_expression_is_a_valid_rate(tf, minutes, expression):
    assert _schedule(tf, minutes) == expression


def test_schedule_runs_every_interval_and_targets_the_function(tf):
    assert default(tf, "reconcile_interval_minutes") == 5
    rule = tf.resource("aws_cloudwatch_event_rule", "reconciler")
    assert rule["schedule_expression"] == "${local.reconciler_schedule}"
    target = tf.resource("aws_cloudwatch_event_target", "reconciler")
    assert target["rule"] == "${aws_cloudwatch_event_rule.reconciler[0].name}"
    assert target["arn"] == "${aws_lambda_function.reconciler[0].arn}"


def test_only_the_schedule_may_invoke_the_function(tf):
    permission = tf.resource("aws_lambda_permission", "reconciler_schedule")
    assert permission["action"] == "lambda:InvokeFunction"
    assert permission["principal"] == "events.amazonaws.com"
    assert permission["function_name"] == "${aws_lambda_function.reconciler[0].function_name}"
    assert permission["source_arn"] == "${aws_cloudwatch_event_rule.reconciler[0].arn}"


# --- the role: least privilege ----------------------------------------------------------------


def test_role_is_assumed_by_lambda_only(tf):
    (statement,) = blocks(tf.data["aws_iam_policy_document"]["reconciler_assume"], "statement")
    assert statement["actions"] == ["sts:AssumeRole"]
    assert one(statement, "principals")["identifiers"] == ["lambda.amazonaws.com"]
    assert tf.resource("aws_iam_role", "reconciler")["assume_role_policy"] == (
        "${data.aws_iam_policy_document.reconciler_assume.json}"
    )
    policy = tf.resource("aws_iam_role_policy", "reconciler")
    assert policy["role"] == "${aws_iam_role.reconciler[0].id}"
    assert policy["policy"] == "${data.aws_iam_policy_document.reconciler[0].json}"


def test_role_grants_exactly_the_reconcilers_actions_on_the_stacks_resources(tf):
    found = {s["sid"]: (set(s["actions"]), set(s["resources"])) for s in _statements(tf)}
    assert found == RECONCILER_STATEMENTS
    actions = [a for s in _statements(tf) for a in s["actions"]]
    assert len(actions) == len(set(actions)), "an action is granted twice"
    for statement in _statements(tf):
        assert statement.get("effect", "Allow") == "Allow"
        assert "*" not in statement["resources"]


def test_role_may_not_touch_the_bucket_or_the_index(tf):
    for statement in _statements(tf):
        assert not any(a.startswith("s3:") for a in statement["actions"]), statement["sid"]
        assert not any("index" in r or "s3" in r for r in statement["resources"]), statement["sid"]


def test_each_reconciler_statement_says_why(tf):
    text = tf.text("reconciler.tf")
    document = text.split('data "aws_iam_policy_document" "reconciler" {', 1)[1]
    chunks = document.split("statement {")
    for before in chunks[:-1]:
        assert before.rstrip().splitlines()[-1].strip().startswith("#"), "a statement without a comment"


# --- docs and outputs -------------------------------------------------------------------------


def test_output_names_the_function_or_null(tf):
    output = tf.outputs["reconciler_function_name"]
    assert output["value"] == "${one(aws_lambda_function.reconciler[*].function_name)}"


def test_readme_says_why_and_how_to_deploy():
    text = (tfmodel.TF_DIR / "README.md").read_text(encoding="utf-8")
    for needle in ("submit deploy reconciler", "reconciler_package_key", "scale-to-zero", "backlog", "min_size"):
        assert needle in text, needle
