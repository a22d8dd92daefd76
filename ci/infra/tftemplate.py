"""Terraform's templatefile for the subset terraform/templates/ may use: plain `${name}`
interpolations and `$${` escapes, nothing else.

Apart from tfmodel (which needs python-hcl2) so that the project's own tests render the user
data with the same renderer: tests/integration/test_boot.py runs the rendered script.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).resolve().parents[2] / "terraform" / "templates" / "user_data.sh.tftpl"
PLACEHOLDER = re.compile(r"(?<!\$)\$\{([^}]*)\}")


def template_placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def render_template(text: str, values: dict[str, Any]) -> str:
    """Render like Terraform's templatefile for the subset the template may use."""
    if "%{" in text:
        raise ValueError("template directives (%{ }) are not supported by this renderer")

    def sub(match: re.Match) -> str:
        name = match.group(1)
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain interpolation: ${{{name}}}")
        if name not in values:
            raise KeyError(f"template variable {name!r} not provided")
        value = values[name]
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    rendered = PLACEHOLDER.sub(sub, text)
    return rendered.replace("$${", "${").replace("%%{", "%{")
