"""Load the Terraform module with python-hcl2 into plain Python data for the checks.

python-hcl2 (8.x) keeps string literals quoted ('"abc"'), marks blocks with
``__is_block__`` and collects comments under ``__comments__``; :func:`normalize` strips the
quotes and markers so tests compare plain values. Expressions stay as ``${...}`` strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2

REPO = Path(__file__).resolve().parents[2]
TF_DIR = REPO / "terraform"
TEMPLATE = TF_DIR / "templates" / "user_data.sh.tftpl"


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def normalize(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ("__is_block__", "__comments__", "__inline_comments__"):
                continue
            out[unquote(key)] = normalize(value)
        return out
    if isinstance(node, list):
        return [normalize(v) for v in node]
    if isinstance(node, str):
        return unquote(node)
    return node


def parse_file(path: Path) -> dict:
    with path.open(encoding="utf-8") as handle:
        return normalize(hcl2.load(handle))


@dataclass
class Module:
    files: dict[str, dict] = field(default_factory=dict)
    resources: dict[str, dict[str, dict]] = field(default_factory=dict)
    data: dict[str, dict[str, dict]] = field(default_factory=dict)
    variables: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    terraform: list[dict] = field(default_factory=list)
    providers: list[dict] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)  # "type.name" -> file name

    def resource(self, rtype: str, name: str) -> dict:
        return self.resources[rtype][name]

    def text(self, filename: str) -> str:
        return (TF_DIR / filename).read_text(encoding="utf-8")


def load_module(directory: Path = TF_DIR) -> Module:
    mod = Module()
    for path in sorted(directory.glob("*.tf")):
        parsed = parse_file(path)
        mod.files[path.name] = parsed
        for kind, target in (("resource", mod.resources), ("data", mod.data)):
            for entry in parsed.get(kind, []):
                for rtype, named in entry.items():
                    for name, body in named.items():
                        assert name not in target.setdefault(rtype, {}), f"duplicate {rtype}.{name}"
                        target[rtype][name] = body
                        mod.where[f"{rtype}.{name}"] = path.name
        for entry in parsed.get("variable", []):
            mod.variables.update(entry)
        for entry in parsed.get("output", []):
            mod.outputs.update(entry)
        for entry in parsed.get("locals", []):
            mod.locals.update(entry)
        mod.terraform.extend(parsed.get("terraform", []))
        mod.providers.extend(parsed.get("provider", []))
    return mod


def blocks(body: dict, name: str) -> list[dict]:
    """Nested blocks of one kind (python-hcl2 gives a list of dicts, or one dict)."""
    value = body.get(name, [])
    if isinstance(value, dict):
        return [value]
    return list(value)


def one(body: dict, name: str) -> dict:
    found = blocks(body, name)
    assert len(found) == 1, f"expected one {name} block, found {len(found)}"
    return found[0]


def dynamic(body: dict, name: str) -> dict | None:
    for entry in blocks(body, "dynamic"):
        if name in entry:
            return entry[name]
    return None


def expr(value: Any) -> str:
    """An expression without its ${ } wrapper (literals pass through as strings)."""
    text = str(value)
    if text.startswith("${") and text.endswith("}"):
        return text[2:-1]
    return text


def default(mod: Module, variable: str) -> Any:
    return mod.variables[variable].get("default")


_TERNARY = re.compile(r"^(?P<cond>.+?)\s\?\s(?P<yes>.+?)\s:\s(?P<no>.+)$")


def eval_simple(expression: str, names: dict[str, Any]) -> Any:
    """Evaluate a tiny arithmetic HCL expression (names, + - * /, ==, one ternary, null)."""
    text = expr(expression).strip()
    match = _TERNARY.match(text)
    if match:
        cond = eval_simple(match["cond"], names)
        return eval_simple(match["yes"] if cond else match["no"], names)
    if text == "null":
        return None
    py = text
    for name in sorted(names, key=len, reverse=True):
        py = re.sub(rf"(?<![\w.]){re.escape(name)}(?![\w.])", f"__n[{name!r}]", py)
    if not re.fullmatch(r"[\s\d+\-*/()=<>!]*", re.sub(r"__n\['[\w.]+'\]", "", py)):
        raise ValueError(f"not a simple expression: {text!r}")
    return eval(py, {"__builtins__": {}}, {"__n": names})  # noqa: S307 - checked charset above


# The renderer lives apart (no python-hcl2) so that tests/ can use it too.
from tftemplate import PLACEHOLDER, render_template, template_placeholders  # noqa: E402,F401


# Every process of the stack reads these settings from its environment (SPOTSWEEP_*): the
# submitter's `env_exports` output and the reconciler function both set exactly these.
STACK_SETTINGS = {
    "SPOTSWEEP_BACKEND": "aws",
    "SPOTSWEEP_STACK": "${var.stack}",
    "SPOTSWEEP_REGION": "${var.region}",
    "SPOTSWEEP_QUEUE_NAME": "${aws_sqs_queue.jobs.name}",
    "SPOTSWEEP_DLQ_NAME": "${aws_sqs_queue.dlq.name}",
    "SPOTSWEEP_TABLE_NAME": "${aws_dynamodb_table.jobs.name}",
    "SPOTSWEEP_BUCKET": "${aws_s3_bucket.artifacts.bucket}",
    "SPOTSWEEP_LEASE_S": "${var.lease_s}",
    "SPOTSWEEP_MAX_RECEIVES": "${var.max_receive_count}",
}
