"""Structure of terraform/: what the issue and the Python side's settings contract require.

Offline: python-hcl2 parses the module; nothing talks to AWS.
"""

from __future__ import annotations

import json
import re

import pytest

import tfmodel
from tfmodel import blocks, default, dynamic, expr, one

TF_FILES = sorted(p.name for p in tfmodel.TF_DIR.glob("*.tf"))

# No hand-kept list of actions: tests/e2e/test_aws_iam.py runs a whole study with the worker and
# submitter policies rendered from iam.tf under moto's IAM enforcement (a missing action fails
# there), and the tests below check the other way: every action granted is one the code calls.
# The calls an action authorizes, where AWS names them differently from the action.
CALLS_OF_ACTION = {
    "s3:ListBucket": ("list_objects_v2", "head_bucket"),
    "s3:GetObject": ("get_object", "head_object", "download_file"),
    "s3:PutObject": ("put_object", "upload_file"),
    "s3:AbortMultipartUpload": ("upload_file",),  # a managed upload aborts its failed parts
    "dynamodb:PutItem": ("put_item", "transact_write_items"),
    "dynamodb:UpdateItem": ("update_item", "transact_write_items"),
    "dynamodb:ConditionCheckItem": ("transact_write_items",),
    "sqs:SendMessage": ("send_message", "send_message_batch"),
    "sqs:DeleteMessage": ("delete_message", "delete_message_batch"),
    "sqs:ChangeMessageVisibility": ("change_message_visibility", "change_message_visibility_batch"),
}
CODE_DIRS = ("shared", "worker", "submitter")
# Where workers write: every job's artifacts (shared.paths.job_prefix) and the feature cache.
WORKER_WRITE_PREFIXES = ("studies", "feature-cache")
# Actions without resource-level permissions: AWS accepts only Resource "*".
STAR_RESOURCE_ALLOWED = {"ec2:DescribeSpotPriceHistory", "autoscaling:DescribeAutoScalingGroups"}


# --- the module as a whole ------------------------------------------------------------------


@pytest.mark.parametrize("name", TF_FILES)
def test_every_file_parses(name):
    parsed = tfmodel.parse_file(tfmodel.TF_DIR / name)
    assert parsed, f"{name} is empty"


def test_standard_module_layout():
    for name in (
        "versions.tf",
        "variables.tf",
        "outputs.tf",
        "queue.tf",
        "table.tf",
        "bucket.tf",
        "iam.tf",
        "compute.tf",
        "autoscaling.tf",
        "alarms.tf",
        "reconciler.tf",
        "README.md",
        "templates/user_data.sh.tftpl",
    ):
        assert (tfmodel.TF_DIR / name).is_file(), name


def test_one_concern_per_file(tf):
    expected = {
        "aws_sqs_queue.jobs": "queue.tf",
        "aws_sqs_queue.dlq": "queue.tf",
        "aws_dynamodb_table.jobs": "table.tf",
        "aws_s3_bucket.artifacts": "bucket.tf",
        "aws_iam_role.worker": "iam.tf",
        "aws_launch_template.worker": "compute.tf",
        "aws_autoscaling_group.workers": "autoscaling.tf",
        "aws_cloudwatch_metric_alarm.dlq_not_empty": "alarms.tf",
        "aws_lambda_function.reconciler": "reconciler.tf",
    }
    for address, filename in expected.items():
        assert tf.where[address] == filename, address


def test_versions(tf):
    (block,) = tf.terraform
    assert block["required_version"] == ">= 1.5"
    aws = one(block, "required_providers")["aws"]
    assert aws["source"] == "hashicorp/aws"
    assert re.fullmatch(r"~> 5\.\d+(\.\d+)?", aws["version"]), aws["version"]


def test_every_variable_is_documented_and_typed(tf):
    assert len(tf.variables) >= 20
    for name, body in tf.variables.items():
        assert body.get("description"), f"variable {name} has no description"
        assert body.get("type"), f"variable {name} has no type"


@pytest.mark.parametrize(
    "name",
    ["stack", "lease_s", "max_receive_count", "instance_types", "spot_allocation_strategy", "max_size",
     "target_backlog_per_instance", "worker_idle_timeout_s", "metadata_hop_limit", "ami_id"],
)
def test_key_variables_are_validated(tf, name):
    assert blocks(tf.variables[name], "validation"), f"variable {name} has no validation"


def _worker_package_pattern(tf) -> re.Pattern[str]:
    """The validation regex for a pinned wheel key in worker_package (HCL escapes undone)."""
    for validation in blocks(tf.variables["worker_package"], "validation"):
        found = re.search(r'regex\("(\^deploy/spotsweep.*?)", var\.worker_package\)', validation["condition"])
        if found:
            return re.compile(found.group(1).replace("\\\\", "\\"))
    raise AssertionError("worker_package has no validation for a wheel key")


@pytest.mark.parametrize(
    ("key", "accepted"),
    [
        ("deploy/spotsweep-0.1.0-py3-none-any.whl", True),  # what `submit deploy worker` prints
        ("spotsweep[worker]", False),  # a package index name: whoever registered it
        ("spotsweep[worker] @ https://example.invalid/spotsweep-0.1.0-py3-none-any.whl", False),
        ("deploy/reconciler-0.1.0-0123456789ab.zip", False),
        ("datasets/spotsweep-0.1.0-py3-none-any.whl", False),
    ],
)
def test_worker_package_is_the_bucket_wheel(tf, key, accepted):
    assert default(tf, "worker_package") == ""  # the wheel deploy/worker-wheel.txt names
    assert bool(_worker_package_pattern(tf).match(key)) is accepted


def test_contract_defaults(tf):
    assert default(tf, "stack") == "spotsweep"
    assert default(tf, "lease_s") == 300
    assert default(tf, "max_receive_count") == 5
    assert default(tf, "queue_retention_days") == 13
    assert default(tf, "min_size") == 0
    assert default(tf, "metadata_hop_limit") == 1
    assert default(tf, "ami_id") is None


def test_resource_names_follow_the_settings_defaults(tf):
    assert tf.locals["queue_name"] == "${var.stack}-jobs"
    assert tf.locals["dlq_name"] == "${var.stack}-jobs-dlq"
    assert tf.locals["table_name"] == "${var.stack}"
    assert tf.locals["bucket_name"] == "${var.stack}-artifacts-${local.account_id}"
    assert tf.locals["account_id"] == "${data.aws_caller_identity.current.account_id}"
    assert tf.locals["cache_dir"] == "/data/cache"
    assert tf.resource("aws_sqs_queue", "jobs")["name"] == "${local.queue_name}"
    assert tf.resource("aws_sqs_queue", "dlq")["name"] == "${local.dlq_name}"
    assert tf.resource("aws_dynamodb_table", "jobs")["name"] == "${local.table_name}"
    assert tf.resource("aws_s3_bucket", "artifacts")["bucket"] == "${local.bucket_name}"
    assert tf.resource("aws_autoscaling_group", "workers")["name"] == "${local.asg_name}"


# --- queue ------------------------------------------------------------------------------------


def test_queue_redrive_to_dlq_with_max_receive_variable(tf):
    queue = tf.resource("aws_sqs_queue", "jobs")
    redrive = expr(queue["redrive_policy"])
    assert redrive.startswith("jsonencode(")
    assert "deadLetterTargetArn = aws_sqs_queue.dlq.arn" in redrive
    assert "maxReceiveCount = var.max_receive_count" in redrive


def test_dlq_accepts_only_the_job_queue(tf):
    allow = expr(tf.resource("aws_sqs_queue_redrive_allow_policy", "dlq")["redrive_allow_policy"])
    assert "byQueue" in allow and "aws_sqs_queue.jobs.arn" in allow


def test_queue_visibility_timeout_is_the_lease_and_long_polls(tf):
    queue = tf.resource("aws_sqs_queue", "jobs")
    assert queue["visibility_timeout_seconds"] == "${var.lease_s}"
    assert queue["receive_wait_time_seconds"] == 20


@pytest.mark.parametrize("name", ["jobs", "dlq"])
def test_queues_are_encrypted(tf, name):
    queue = tf.resource("aws_sqs_queue", name)
    assert queue.get("sqs_managed_sse_enabled") is True or queue.get("kms_master_key_id")


def test_dlq_retention_is_longer_than_the_queue(tf):
    dlq_s = tfmodel.eval_simple(tf.locals["dlq_retention_s"], {})
    assert dlq_s == 14 * 86400
    assert tf.resource("aws_sqs_queue", "dlq")["message_retention_seconds"] == "${local.dlq_retention_s}"
    assert tf.resource("aws_sqs_queue", "jobs")["message_retention_seconds"] == "${local.queue_retention_s}"
    queue_s = tfmodel.eval_simple(tf.locals["queue_retention_s"], {"var.queue_retention_days": default(tf, "queue_retention_days")})
    assert queue_s == 13 * 86400 < dlq_s  # as long as SQS allows, below the DLQ's
    # and the variable cannot be raised to the DLQ's retention
    condition = expr(one(tf.variables["queue_retention_days"], "validation")["condition"])
    assert "var.queue_retention_days <= 13" in condition


def test_alarm_when_dlq_not_empty(tf):
    alarm = tf.resource("aws_cloudwatch_metric_alarm", "dlq_not_empty")
    assert alarm["namespace"] == "AWS/SQS"
    assert alarm["metric_name"] == "ApproximateNumberOfMessagesVisible"
    assert alarm["dimensions"] == {"QueueName": "${aws_sqs_queue.dlq.name}"}
    assert alarm["comparison_operator"] == "GreaterThanThreshold"
    assert alarm["threshold"] == 0
    assert alarm["alarm_actions"] == "${var.alarm_actions}"


# --- table ------------------------------------------------------------------------------------


def test_table_keys_index_billing_pitr_sse(tf):
    table = tf.resource("aws_dynamodb_table", "jobs")
    assert table["billing_mode"] == "PAY_PER_REQUEST"
    assert (table["hash_key"], table["range_key"]) == ("pk", "sk")
    attributes = {a["name"]: a["type"] for a in blocks(table, "attribute")}
    assert attributes == {"pk": "S", "sk": "S", "job_id": "S"}
    (gsi,) = blocks(table, "global_secondary_index")
    assert gsi["name"] == "job_index"
    assert gsi["hash_key"] == "job_id"
    assert gsi["projection_type"] == "ALL"
    assert "range_key" not in gsi
    assert one(table, "point_in_time_recovery")["enabled"] is True
    assert one(table, "server_side_encryption")["enabled"] is True


# --- bucket -----------------------------------------------------------------------------------


def test_bucket_blocks_all_public_access(tf):
    pab = tf.resource("aws_s3_bucket_public_access_block", "artifacts")
    assert pab["bucket"] == "${aws_s3_bucket.artifacts.id}"
    for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
        assert pab[flag] is True, flag
    ownership = one(tf.resource("aws_s3_bucket_ownership_controls", "artifacts"), "rule")
    assert ownership["object_ownership"] == "BucketOwnerEnforced"


def test_bucket_encryption_and_versioning(tf):
    sse = one(tf.resource("aws_s3_bucket_server_side_encryption_configuration", "artifacts"), "rule")
    algorithm = one(sse, "apply_server_side_encryption_by_default")["sse_algorithm"]
    assert algorithm in ("aws:kms", "AES256")
    versioning = one(tf.resource("aws_s3_bucket_versioning", "artifacts"), "versioning_configuration")
    assert versioning["status"] == "Enabled"


def test_bucket_lifecycle_expires_noncurrent_versions_and_old_checkpoints(tf):
    rules = blocks(tf.resource("aws_s3_bucket_lifecycle_configuration", "artifacts"), "rule")
    assert all(r["status"] == "Enabled" for r in rules)
    by_prefix = {}
    for rule in rules:
        flt = one(rule, "filter")
        by_prefix[flt.get("prefix", "")] = rule
    everywhere = by_prefix[""]
    assert one(everywhere, "noncurrent_version_expiration")["noncurrent_days"] == "${var.noncurrent_version_days}"
    assert one(everywhere, "abort_incomplete_multipart_upload")["days_after_initiation"] >= 1
    studies = by_prefix["studies/"]
    assert one(studies, "noncurrent_version_expiration")["noncurrent_days"] == "${var.checkpoint_noncurrent_days}"
    assert default(tf, "noncurrent_version_days") == 30
    assert default(tf, "checkpoint_noncurrent_days") < default(tf, "noncurrent_version_days")


def test_bucket_policy_denies_insecure_transport(tf):
    policy = tf.resource("aws_s3_bucket_policy", "artifacts")
    assert policy["policy"] == "${data.aws_iam_policy_document.artifacts_tls_only.json}"
    (statement,) = blocks(tf.data["aws_iam_policy_document"]["artifacts_tls_only"], "statement")
    assert statement["effect"] == "Deny"
    assert statement["actions"] == ["s3:*"]
    principal = one(statement, "principals")
    assert principal["identifiers"] == ["*"]
    assert set(statement["resources"]) == {"${aws_s3_bucket.artifacts.arn}", "${aws_s3_bucket.artifacts.arn}/*"}
    condition = one(statement, "condition")
    assert (condition["test"], condition["variable"], condition["values"]) == ("Bool", "aws:SecureTransport", ["false"])


# --- IAM --------------------------------------------------------------------------------------


def _worker_statements(tf):
    return blocks(tf.data["aws_iam_policy_document"]["worker"], "statement")


def _calls_in(dirs: tuple[str, ...]) -> set[str]:
    """The AWS client methods the code calls: `.op(` and `get_paginator("op")`."""
    calls: set[str] = set()
    for name in dirs:
        for path in (tfmodel.REPO / name).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            calls |= set(re.findall(r"\.([a-z][a-z0-9_]+)\(", text))
            calls |= set(re.findall(r'get_paginator\("([a-z0-9_]+)"\)', text))
    return calls


def _snake(name: str) -> str:
    """An API operation's Python method name (as botocore's xform_name for these names)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _calls_of(action: str) -> tuple[str, ...]:
    return CALLS_OF_ACTION.get(action, (_snake(action.split(":", 1)[1]),))


@pytest.mark.parametrize("document", ["worker", "submitter"])
def test_every_granted_action_is_one_the_code_calls(tf, document):
    actions = [a for s in blocks(tf.data["aws_iam_policy_document"][document], "statement") for a in s["actions"]]
    assert len(actions) == len(set(actions)), "an action is granted twice"
    calls = _calls_in(CODE_DIRS)
    unused = [a for a in actions if not set(_calls_of(a)) & calls]
    assert not unused, f"{document} policy grants actions no code calls: {unused}"


def test_the_workers_own_aws_calls_are_granted(tf):
    """worker/ talks to EC2 (pricing.py) and Auto Scaling (asg.py) itself; the adapters in shared/
    are exercised under enforcement by tests/e2e/test_aws_iam.py (moto runs no instance for these)."""
    granted = {a for s in _worker_statements(tf) for a in s["actions"]}
    for service, filename, client in (("ec2", "pricing.py", "ec2_client"), ("autoscaling", "asg.py", "self.client")):
        text = (tfmodel.REPO / "worker" / filename).read_text(encoding="utf-8")
        methods = set(re.findall(rf"{re.escape(client)}\.([a-z_]+)\(", text))
        assert methods, f"worker/{filename} no longer calls {client}"
        for method in methods:
            action = f"{service}:" + "".join(part.capitalize() for part in method.split("_"))
            assert action in granted, f"worker/{filename} calls {method} but the worker policy lacks {action}"


def test_no_wildcard_actions_anywhere(tf):
    for name, doc in tf.data["aws_iam_policy_document"].items():
        for statement in blocks(doc, "statement"):
            if statement.get("effect") == "Deny":
                continue
            for action in statement.get("actions", []):
                assert "*" not in action, f"{name}: wildcard action {action}"


def test_star_resources_only_where_aws_allows_nothing_narrower(tf):
    for statement in _worker_statements(tf):
        assert statement.get("effect", "Allow") == "Allow"
        resources = statement["resources"]
        if "*" in resources:
            assert resources == ["*"]
            assert set(statement["actions"]) <= STAR_RESOURCE_ALLOWED, statement["sid"]
        else:
            for arn in resources:
                assert arn.startswith("${aws_"), f"{statement['sid']}: {arn} is not one of the stack's ARNs"


def test_each_star_resource_is_commented(tf):
    text = tf.text("iam.tf")
    chunks = text.split("statement {")
    for before, statement in zip(chunks, chunks[1:]):
        if re.search(r'resources\s*=\s*\["\*"\]', statement):
            comment = [line for line in before.splitlines()[-8:] if line.strip().startswith("#")]
            assert any('"*"' in line for line in comment), "a Resource \"*\" statement has no comment saying why"


def test_worker_resources_are_this_stacks(tf):
    by_sid = {s["sid"]: s for s in _worker_statements(tf)}
    assert set(by_sid["JobQueue"]["resources"]) == {"${aws_sqs_queue.jobs.arn}", "${aws_sqs_queue.dlq.arn}"}
    assert set(by_sid["JobStore"]["resources"]) == {
        "${aws_dynamodb_table.jobs.arn}",
        "${aws_dynamodb_table.jobs.arn}/index/*",
    }
    assert by_sid["ArtifactsList"]["resources"] == ["${aws_s3_bucket.artifacts.arn}"]
    assert by_sid["ArtifactsRead"]["resources"] == ["${aws_s3_bucket.artifacts.arn}/*"]
    assert set(by_sid["ArtifactsWrite"]["resources"]) == {
        f"${{aws_s3_bucket.artifacts.arn}}/{prefix}/*" for prefix in WORKER_WRITE_PREFIXES
    }
    assert by_sid["OwnAutoScalingGroup"]["resources"] == ["${aws_autoscaling_group.workers.arn}"]


def test_s3_writes_only_under_the_workers_prefixes(tf):
    """Reads anywhere (datasets, weights), writes and deletes only where workers write."""
    writes = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    for statement in _worker_statements(tf):
        if writes & set(statement["actions"]):
            assert statement["sid"] == "ArtifactsWrite", statement["sid"]
    by_sid = {s["sid"]: s for s in _worker_statements(tf)}
    assert by_sid["ArtifactsRead"]["actions"] == ["s3:GetObject"]
    assert set(by_sid["ArtifactsWrite"]["actions"]) == writes


def test_write_prefixes_are_the_ones_the_code_writes():
    """The policy's prefixes follow the code: a moved prefix fails here, not on AWS."""
    paths = (tfmodel.REPO / "shared" / "paths.py").read_text(encoding="utf-8")
    job_prefix = re.search(r'def job_prefix\(.*\n(?:.*\n){0,3}\s+return f"studies/\{', paths)
    assert job_prefix, "shared.paths.job_prefix no longer writes under studies/"
    worker_code = "".join(path.read_text(encoding="utf-8") for path in (tfmodel.REPO / "worker").rglob("*.py"))
    assert set(re.findall(r'feature_cache_prefix: str = "([^"]+)"', worker_code)) == {"feature-cache"}


def test_role_trusts_ec2_and_has_an_instance_profile(tf):
    (statement,) = blocks(tf.data["aws_iam_policy_document"]["worker_assume"], "statement")
    assert statement["actions"] == ["sts:AssumeRole"]
    assert one(statement, "principals")["identifiers"] == ["ec2.amazonaws.com"]
    assert tf.resource("aws_iam_instance_profile", "worker")["role"] == "${aws_iam_role.worker.name}"
    attachment = tf.resource("aws_iam_role_policy_attachment", "worker")
    assert attachment["policy_arn"] == "${aws_iam_policy.worker.arn}"


# --- launch template --------------------------------------------------------------------------


def test_ami_is_the_deep_learning_ami_by_name_and_overridable(tf):
    ami = tf.data["aws_ami"]["worker"]
    assert ami["most_recent"] is True
    assert "amazon" in ami["owners"]
    filters = {f["name"]: f["values"] for f in blocks(ami, "filter")}
    name_filter = next(v for k, v in filters.items() if "name" in k)
    assert "var.ami_name_pattern" in name_filter[0] and "var.ami_id" in name_filter[0]
    pattern = default(tf, "ami_name_pattern")
    # The maintained base GPU AMI (no framework: the bootstrap installs TensorFlow into a venv)
    # on Ubuntu 24.04, whose Python 3.12 fits requires-python >= 3.11.
    assert pattern == "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) *"
    assert tf.resource("aws_launch_template", "worker")["image_id"] == "${data.aws_ami.worker.id}"


def test_launch_template_requires_imdsv2(tf):
    meta = one(tf.resource("aws_launch_template", "worker"), "metadata_options")
    assert meta["http_tokens"] == "required"
    assert meta["http_endpoint"] == "enabled"
    assert meta["http_put_response_hop_limit"] == "${var.metadata_hop_limit}"
    assert default(tf, "metadata_hop_limit") == 1


def test_launch_template_volumes_are_encrypted_gp3(tf):
    mappings = blocks(tf.resource("aws_launch_template", "worker"), "block_device_mappings")
    assert len(mappings) == 2
    for mapping in mappings:
        ebs = one(mapping, "ebs")
        assert ebs["encrypted"] is True
        assert ebs["volume_type"] == "gp3"
        assert ebs["delete_on_termination"] is True
    data = next(m for m in mappings if m["device_name"] == "/dev/sdf")
    assert one(data, "ebs")["volume_size"] == "${var.data_volume_size_gb}"


def test_launch_template_profile_network_and_user_data(tf):
    lt = tf.resource("aws_launch_template", "worker")
    assert one(lt, "iam_instance_profile")["arn"] == "${aws_iam_instance_profile.worker.arn}"
    assert lt["user_data"] == "${base64encode(local.user_data)}"
    assert expr(tf.locals["user_data"]).startswith('templatefile("${path.module}/templates/user_data.sh.tftpl"')
    sg = tf.resource("aws_security_group", "worker")
    assert "ingress" not in sg
    for egress in blocks(sg, "egress"):
        assert (egress["from_port"], egress["to_port"], egress["protocol"]) == (443, 443, "tcp")


# --- autoscaling ------------------------------------------------------------------------------


def test_asg_is_spot_only_across_gpu_types(tf):
    asg = tf.resource("aws_autoscaling_group", "workers")
    assert asg["min_size"] == "${var.min_size}" and default(tf, "min_size") == 0
    assert asg["max_size"] == "${var.max_size}"
    assert asg["capacity_rebalance"] is True
    mip = one(asg, "mixed_instances_policy")
    dist = one(mip, "instances_distribution")
    assert dist["on_demand_base_capacity"] == 0
    assert dist["on_demand_percentage_above_base_capacity"] == 0
    assert dist["spot_allocation_strategy"] == "${var.spot_allocation_strategy}"
    assert default(tf, "spot_allocation_strategy") in ("capacity-optimized", "price-capacity-optimized")
    lt = one(mip, "launch_template")
    spec = one(lt, "launch_template_specification")
    assert spec["launch_template_id"] == "${aws_launch_template.worker.id}"
    override = dynamic(lt, "override")
    assert override["for_each"] == "${var.instance_types}"
    types = default(tf, "instance_types")
    assert len(types) >= 3 and {"g4dn.xlarge", "g5.xlarge", "g6.xlarge"} <= set(types)
    assert all(t.startswith(("g4dn.", "g5.", "g6.", "g6e.", "p3.", "p4d.", "p5.")) for t in types)
    assert "GroupInServiceInstances" in asg["enabled_metrics"]
    assert asg["metrics_granularity"] == "1Minute"
    assert "desired_capacity" not in asg


def _metric_queries(spec):
    found = {}
    for metric in blocks(spec, "metrics"):
        found[metric["id"]] = metric
    return found


def test_target_tracking_on_backlog_per_instance_metric_math(tf):
    policy = tf.resource("aws_autoscaling_policy", "backlog_per_instance")
    assert policy["policy_type"] == "TargetTrackingScaling"
    assert policy["autoscaling_group_name"] == "${aws_autoscaling_group.workers.name}"
    config = one(policy, "target_tracking_configuration")
    assert config["target_value"] == "${var.target_backlog_per_instance}"
    queries = _metric_queries(one(config, "customized_metric_specification"))

    def metric_of(query):
        stat = one(query, "metric_stat")
        metric = one(stat, "metric")
        dims = {d["name"]: d["value"] for d in blocks(metric, "dimensions")}
        return metric["namespace"], metric["metric_name"], dims

    ids = {}
    for qid, query in queries.items():
        if "metric_stat" in query:
            assert query["return_data"] is False
            ids[metric_of(query)[:2]] = (qid, metric_of(query)[2])
    visible, vdims = ids[("AWS/SQS", "ApproximateNumberOfMessagesVisible")]
    in_flight, fdims = ids[("AWS/SQS", "ApproximateNumberOfMessagesNotVisible")]
    in_service, sdims = ids[("AWS/AutoScaling", "GroupInServiceInstances")]
    assert vdims == fdims == {"QueueName": "${aws_sqs_queue.jobs.name}"}
    assert sdims == {"AutoScalingGroupName": "${aws_autoscaling_group.workers.name}"}
    (expression,) = [q for q in queries.values() if "expression" in q]
    assert expression["return_data"] is True
    compact = expression["expression"].replace(" ", "")
    assert compact == f"({visible}+{in_flight})/{in_service}"


def test_scale_out_from_zero_policy_and_alarm(tf):
    policy = tf.resource("aws_autoscaling_policy", "scale_from_zero")
    assert policy["policy_type"] == "StepScaling"
    assert policy["adjustment_type"] == "ExactCapacity"
    steps = dynamic(policy, "step_adjustment")
    assert steps["for_each"] == "${local.scale_from_zero_steps}"
    alarm = tf.resource("aws_cloudwatch_metric_alarm", "scale_from_zero")
    assert alarm["alarm_actions"] == ["${aws_autoscaling_policy.scale_from_zero.arn}"]
    assert (alarm["comparison_operator"], alarm["threshold"]) == ("GreaterThanThreshold", 0)
    queries = {q["id"]: q for q in blocks(alarm, "metric_query")}
    names = {q["id"]: one(q, "metric")["metric_name"] for q in queries.values() if "metric" in q}
    assert sorted(names.values()) == sorted(
        ["ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible", "GroupInServiceInstances"]
    )
    (math_q,) = [q for q in queries.values() if "expression" in q]
    assert math_q["return_data"] is True
    inv = {v: k for k, v in names.items()}
    text = math_q["expression"].replace(" ", "")
    assert text.startswith(f"IF(FILL({inv['GroupInServiceInstances']},0)==0,")
    assert f"FILL({inv['ApproximateNumberOfMessagesVisible']},0)" in text
    assert f"FILL({inv['ApproximateNumberOfMessagesNotVisible']},0)" in text


def test_scaling_rule_is_documented_beside_the_policy(tf):
    text = tf.text("autoscaling.tf")
    assert "ci/infra/scaling.py" in text
    assert "ceil(backlog / target_backlog_per_instance)" in text


# --- outputs ----------------------------------------------------------------------------------


def test_outputs(tf):
    for name in ("queue_name", "queue_url", "dlq_name", "dlq_url", "table_name", "bucket_name", "region", "asg_name", "env_exports",
                 "reconciler_function_name"):
        assert name in tf.outputs, name
        assert tf.outputs[name].get("description"), name
    assert tf.outputs["bucket_name"]["value"] == "${aws_s3_bucket.artifacts.bucket}"


def test_env_exports_is_one_export_line_with_every_setting(tf):
    value = expr(tf.outputs["env_exports"]["value"])
    assert value.startswith('join(" ", ["export", ')
    for key, ref in tfmodel.STACK_SETTINGS.items():
        assert f'"{key}={ref}"' in value, key


# --- agreement with ci/infra/scaling.py --------------------------------------------------------


def test_terraform_defaults_equal_the_scaling_module(tf, scaling):
    assert default(tf, "target_backlog_per_instance") == scaling.DEFAULT_TARGET_BACKLOG_PER_INSTANCE
    assert default(tf, "worker_idle_timeout_s") == scaling.DEFAULT_SCALE_TO_ZERO_AFTER_S
    assert default(tf, "max_size") == scaling.DEFAULT_MAX_SIZE
    assert tf.locals["scale_from_zero_max_steps"] == scaling.MAX_SCALE_FROM_ZERO_STEPS


def _terraform_steps(tf, target, max_size):
    """Evaluate local.scale_from_zero_steps for given variable values."""
    n = min(max_size, tf.locals["scale_from_zero_max_steps"])
    assert expr(tf.locals["scale_from_zero_n"]) == "min(var.max_size, local.scale_from_zero_max_steps)"
    body = expr(tf.locals["scale_from_zero_steps"])
    match = re.fullmatch(
        r"\[for k in range\(1, local\.scale_from_zero_n \+ 1\) : "
        r"\{lower = (?P<lower>.+), upper = (?P<upper>.+), capacity = (?P<capacity>.+)\}\]",
        body,
    )
    assert match, body
    steps = []
    for k in range(1, n + 1):
        names = {"k": k, "var.target_backlog_per_instance": target, "local.scale_from_zero_n": n}
        steps.append(tuple(tfmodel.eval_simple(match[p], names) for p in ("lower", "upper", "capacity")))
    return steps


@pytest.mark.parametrize("target", [1, 2, 3, 7])
@pytest.mark.parametrize("max_size", [1, 3, 4, 10, 40])
def test_terraform_step_table_equals_scale_from_zero_steps(tf, scaling, target, max_size):
    assert _terraform_steps(tf, target, max_size) == [tuple(s) for s in scaling.scale_from_zero_steps(target, max_size)]


def test_terraform_step_table_implements_desired_capacity(tf, scaling):
    target, max_size = default(tf, "target_backlog_per_instance"), default(tf, "max_size")
    steps = _terraform_steps(tf, target, max_size)
    for backlog in range(1, 100):
        (capacity,) = [c for lo, hi, c in steps if lo <= backlog and (hi is None or backlog < hi)]
        assert capacity == scaling.desired_capacity(backlog, 0, target, 0, max_size), backlog


# --- docs and image ---------------------------------------------------------------------------


def test_readme_walks_through_the_lifecycle():
    text = (tfmodel.TF_DIR / "README.md").read_text(encoding="utf-8")
    for needle in (
        "terraform apply",
        "env_exports",
        "submit study examples/sweep.json",
        "terraform destroy",
        "docker run",
        "--gpus all",
        "idle",
    ):
        assert needle in text, needle


def test_dockerfile_is_pinned_non_root_with_healthcheck():
    text = (tfmodel.REPO / "Dockerfile").read_text(encoding="utf-8")
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert re.fullmatch(r"tensorflow/tensorflow:\d+\.\d+\.\d+-gpu", base), base
    user = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK\s", text, flags=re.M)
    (entry,) = re.findall(r"^ENTRYPOINT\s+(.+)$", text, flags=re.M)
    assert json.loads(entry) == ["worker", "run"]
    assert 'pip install --no-cache-dir ".[worker]"' in text  # the worker extra: TensorFlow, Keras


def test_container_mode_pulls_from_ecr_with_exactly_the_pull_actions(tf):
    """The bootstrap logs in to ECR (`aws ecr get-login-password`) and docker pulls: the role gets
    AWS's pull-only set on the image's repository, and only when worker_image is an ECR image."""
    doc = tf.data["aws_iam_policy_document"]["worker_ecr"]
    assert expr(doc["count"]) == "local.ecr_image == null ? 0 : 1"
    by_sid = {s["sid"]: s for s in blocks(doc, "statement")}
    assert set(by_sid["PullWorkerImage"]["actions"]) == {
        "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"}
    assert by_sid["PullWorkerImage"]["resources"] == [
        "arn:aws:ecr:${local.ecr_image[1]}:${local.ecr_image[0]}:repository/${local.ecr_image[2]}"]
    assert by_sid["EcrLogin"] == {"sid": "EcrLogin", "actions": ["ecr:GetAuthorizationToken"], "resources": ["*"]}
    pattern = re.search(r'regex\("(.+?)", var\.worker_image\)', tf.text("iam.tf")).group(1).replace("\\\\", "\\")
    assert re.match(pattern, "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/spotsweep:1.2").groups() == (
        "123456789012", "eu-west-1", "team/spotsweep")
    assert re.match(pattern, "ghcr.io/team/spotsweep:1.2") is None
    user_data = tfmodel.TEMPLATE.read_text(encoding="utf-8")
    assert "aws ecr get-login-password" in user_data
