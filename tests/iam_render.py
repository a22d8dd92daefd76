"""IAM policies rendered from terraform/iam.tf itself, for moto's server with IAM enforced.

`render_policy(name, arns)` turns `data "aws_iam_policy_document" NAME` (parsed by python-hcl2,
through ci/infra/tfmodel.py) into the JSON document Terraform would produce, with each
reference (`aws_sqs_queue.jobs.arn`) replaced by the ARN of the matching resource on moto.
Nothing is kept by hand: a statement added to or removed from iam.tf changes what the tests'
workers and submitters may do.

`for_moto(policy)` adds, in one place (`MOTO_ALIASES`), the names under which moto checks a
few calls that AWS checks under other names.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TF_DIR = REPO / "terraform"

# moto 5 checks these calls under names AWS does not use. Each entry: moto's action name ->
# the AWS actions that authorize the same call. The alias is granted only when the policy
# grants every one of them, so the rendered policy allows on moto exactly what it allows on AWS.
MOTO_ALIASES: dict[str, frozenset[str]] = {
    # HeadBucket: AWS checks s3:ListBucket.
    "s3:HeadBucket": frozenset({"s3:ListBucket"}),
    # SQS batch calls: AWS checks the single action.
    "sqs:SendMessageBatch": frozenset({"sqs:SendMessage"}),
    "sqs:DeleteMessageBatch": frozenset({"sqs:DeleteMessage"}),
    "sqs:ChangeMessageVisibilityBatch": frozenset({"sqs:ChangeMessageVisibility"}),
    # TransactWriteItems: AWS checks the item actions inside (this project's transactions put,
    # update and condition-check items).
    "dynamodb:TransactWriteItems": frozenset(
        {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem"}
    ),
}

_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


def _tfmodel() -> ModuleType:
    """ci/infra/tfmodel.py (not a package: loaded from its path, once)."""
    name = "iam_render_tfmodel"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "ci" / "infra" / "tfmodel.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up there
        sys.path.insert(0, str(REPO / "ci" / "infra"))  # for its own imports (tftemplate), only now
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(REPO / "ci" / "infra"))
    return sys.modules[name]


def policy_statements(name: str, tf_dir: Path = TF_DIR) -> list[dict[str, Any]]:
    """The statements of `data "aws_iam_policy_document" NAME`, as parsed (references unresolved)."""
    tfmodel = _tfmodel()
    module = tfmodel.load_module(tf_dir)
    return tfmodel.blocks(module.data["aws_iam_policy_document"][name], "statement")


def resolve(value: str, arns: dict[str, str]) -> str:
    """`${aws_s3_bucket.artifacts.arn}/studies/*` -> `arn:aws:s3:::b/studies/*` (KeyError names
    any reference the test did not provide)."""

    def sub(match: re.Match[str]) -> str:
        reference = match.group(1)
        if reference not in arns:
            raise KeyError(f"no ARN given for the reference {reference!r} in iam.tf")
        return arns[reference]

    return _REFERENCE.sub(sub, value)


def render_policy(name: str, arns: dict[str, str], tf_dir: Path = TF_DIR) -> dict[str, Any]:
    """The IAM JSON of the policy document `name`, its references resolved with `arns`."""
    statements = []
    for statement in policy_statements(name, tf_dir):
        statements.append(
            {
                "Sid": statement["sid"],
                "Effect": statement.get("effect", "Allow"),
                "Action": list(statement["actions"]),
                "Resource": [resolve(resource, arns) for resource in statement["resources"]],
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def for_moto(policy: dict[str, Any]) -> dict[str, Any]:
    """`policy` with moto's alias added beside the AWS actions that authorize the same call."""
    statements = []
    for statement in policy["Statement"]:
        actions = set(statement["Action"])
        aliases = sorted(alias for alias, needed in MOTO_ALIASES.items() if needed <= actions)
        statements.append({**statement, "Action": list(statement["Action"]) + aliases})
    return {**policy, "Statement": statements}


def granted_actions(policy: dict[str, Any]) -> set[str]:
    return {action for statement in policy["Statement"] for action in statement["Action"]}
