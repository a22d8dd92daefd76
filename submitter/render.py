"""Rendering tables in every --format: table (rich), json, csv, markdown."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import pandas as pd
from rich.console import Console
from rich.table import Table

Format = Literal["table", "json", "csv", "markdown"]
FORMATS = ("table", "json", "csv", "markdown")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def rich_table(frame: pd.DataFrame, title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold")
    for column in frame.columns:
        numeric = pd.api.types.is_numeric_dtype(frame[column])
        table.add_column(str(column), justify="right" if numeric else "left", no_wrap=column != "params")
    for row in frame.itertuples(index=False):
        table.add_row(*(_cell(v) for v in row))
    return table


def markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts (NaN -> null)."""
    return json.loads(frame.to_json(orient="records"))


def emit(console: Console, frame: pd.DataFrame, fmt: Format, document: dict[str, Any] | None = None, title: str | None = None) -> None:
    """Print `frame` in `fmt`. For json, `document` (with the rows under "rows") is printed instead."""
    if fmt == "json":
        payload = {**(document or {}), "rows": records(frame)}
        print(json.dumps(payload, indent=2, default=str))
    elif fmt == "csv":
        print(frame.to_csv(index=False), end="")
    elif fmt == "markdown":
        print(markdown(frame))
    else:
        console.print(rich_table(frame, title))
