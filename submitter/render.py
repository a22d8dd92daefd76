"""Rendering tables in every --format: table (rich), json, csv, markdown, and the report's HTML.

Two rules hold for everything printed here.

**Data is text, never markup.** Records, manifests and study files are written by other people
(a teammate's credentials, a shared bucket), so a string from them must never become Rich markup
(`[link=http://evil]x[/link]` is a clickable link; `mobilenet[/bold]` is a MarkupError) nor reach
the terminal with its control characters (`\\x1b]8;;...` is an OSC-8 hyperlink, `\\x1b[2J` clears the
screen). `clean` removes control characters (C0 but tab and newline where several lines are
allowed, DEL, C1, and so ESC), `plain` makes a `rich.text.Text` of it (never parsed), and
`data_console` makes a console on which even a plain `str` is neither markup, emoji nor
highlighted, and loses its control characters too: the safety net under `plain`.

**One number format per column.** `column_format` decides from a column's name and values how
every cell of it is written (accuracies with 4 decimals, seconds with 1, costs in dollars with the
decimals that show the cheapest job to 2 significant digits, counts as integers with thousands
separators, intervals (cells holding a `(low, high)` pair) by their half-width, `\u00b10.042`: the
ends are in json and csv), so `4.9900` never stands above `64.1`. Markdown and HTML use the same formats.

Output per format: json is faithful (json.dumps escapes every control and non-ASCII character, so
no raw ESC), csv is the data with control characters removed (tab and newline kept: CSV quotes
them), markdown and table are the formatted cells with control characters removed.
"""

from __future__ import annotations

import html
import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, Literal

import pandas as pd
from rich.console import Console, Group
from rich.highlighter import JSONHighlighter
from rich.table import Table
from rich.text import Text

Format = Literal["table", "json", "csv", "markdown"]
FORMATS = ("table", "json", "csv", "markdown")
Formatter = Callable[[Any], str]
WRAPPING = {"params"}  # long `k=v` lists wrap; every other column keeps a row on one line

_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
_ONE_LINE = {code: None for code in _CONTROLS} | {ord("\t"): " ", ord("\n"): " "}
_MULTILINE = {code: None for code in _CONTROLS if code not in (ord("\t"), ord("\n"))}


def clean(value: object, multiline: bool = False) -> str:
    """`str(value)` without control characters (C0, DEL, C1; ESC among them). On one line, a tab
    or newline becomes a space so that words stay apart; with `multiline` both are kept."""
    return ("" if value is None else str(value)).translate(_MULTILINE if multiline else _ONE_LINE)


def plain(value: object, style: str = "", multiline: bool = False) -> Text:
    """A record's or manifest's value as Rich text: cleaned, never parsed as markup."""
    return Text(clean(value, multiline), style=style)


class _DataConsole(Console):
    """A console for data: every `str` it renders is cleaned of control characters (markup,
    emoji and highlighting are off in `data_console`), so a forgotten `plain` is still safe."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(clean(text, multiline=True), **kwargs)


def data_console(stderr: bool = False, **options: Any) -> Console:
    """The console every command prints on. Piped output (CI logs, `| less`) gets a wide table
    rather than rich's default 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stderr or stream.isatty() else 160
    defaults: dict[str, Any] = {"stderr": stderr, "width": width, "markup": False, "highlight": False, "emoji": False}
    return _DataConsole(**(defaults | options))


def json_text(data: Any) -> Text:
    """`data` as indented, highlighted JSON for a person: strings cleaned, nothing escaped away."""
    return JSONHighlighter()(Text(json.dumps(_cleaned(data), indent=2, ensure_ascii=False)))


def _cleaned(data: Any) -> Any:
    if isinstance(data, str):
        return clean(data, multiline=True)
    if isinstance(data, Mapping):
        return {clean(k): _cleaned(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_cleaned(v) for v in data]
    return data


# --- one number format per column ----------------------------------------------------------

_RATIO_WORDS = {"accuracy", "acc", "loss", "score", "mean", "std", "probability", "gap"}
_INTERVAL_DECIMALS = 3  # a 95% interval over a few hundred examples is +-0.03: the third decimal still moves
_MAX_DECIMALS = 6


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _numbers(values: pd.Series) -> pd.Series | None:
    """The non-missing values as floats if the column is numeric (bools are not), else None."""
    present = [v for v in values if not _is_missing(v)]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in present):
        return None
    return pd.Series(present, dtype=float)


def _intervals(values: pd.Series) -> bool:
    """Whether the column holds intervals: its non-missing cells are all `(low, high)` number pairs."""
    present = [v for v in values if not _is_missing(v)]
    return bool(present) and all(
        isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        for v in present
    )


def _kind(name: str, numbers: pd.Series) -> str:
    words = set(re.split(r"[^a-z]+", name.lower()))
    if "cost" in words or "usd" in words:
        return "money"
    if "seconds" in words or name.endswith("_s"):
        return "seconds"
    if words & _RATIO_WORDS:
        return "ratio"
    if len(numbers) and (numbers == numbers.round()).all():
        return "integer"
    return "float"


def _float_decimals(numbers: pd.Series) -> int:
    """The fewest decimals (at most 4) that write every value of the column exactly; 1 for big ones."""
    if len(numbers) and numbers.abs().max() >= 1000:
        return 1
    return next((d for d in range(5) if (numbers.round(d) - numbers).abs().max() < 1e-9), 4)


def _money_decimals(numbers: pd.Series) -> int:
    """Cents, or more: enough to show the cheapest non-zero cost to 2 significant digits
    (tiny jobs cost fractions of a cent, and `$0.00` would hide them)."""
    nonzero = numbers[numbers != 0].abs()
    if nonzero.empty:
        return 2
    return min(_MAX_DECIMALS, max(2, 1 - math.floor(math.log10(nonzero.min()))))


def column_format(name: str, values: pd.Series) -> tuple[Formatter, bool]:
    """How every cell of column `name` is written, and whether it is numeric (right-aligned).

    The decision is made once per column, from its name (costs, seconds, accuracies and losses)
    and, for other numbers, from its values (integers; else the fewest exact decimals); a column
    of `(low, high)` pairs is written as intervals."""
    if _intervals(values):
        return (lambda v: "" if _is_missing(v) else f"\u00b1{(v[1] - v[0]) / 2:.{_INTERVAL_DECIMALS}f}"), True
    numbers = _numbers(values)
    if numbers is None:
        return (lambda v: "" if _is_missing(v) else clean(v)), False  # a missing text is blank, never "nan"
    kind = _kind(name, numbers)
    decimals = {"money": _money_decimals(numbers), "seconds": 1, "ratio": 4, "integer": 0, "float": _float_decimals(numbers)}[kind]
    prefix = "$" if kind == "money" else ""
    return (lambda v: "" if _is_missing(v) else f"{prefix}{float(v):,.{decimals}f}"), True


def short_number(value: Any) -> Any:
    """A float to 4 significant digits, for `k=v` lists: a sampled learning rate reads 0.000121,
    not 0.00012096990503921729 (json and csv keep every digit)."""
    return f"{value:.4g}" if isinstance(value, float) else value


def formatted(frame: pd.DataFrame, values_as: str | None = None) -> list[tuple[str, bool, list[str]]]:
    """(header, numeric, cells) per column, each column written in its one format. `values_as`
    names the metric every numeric column holds (a `--matrix`: the columns are optimizer names)."""
    columns = []
    for name in frame.columns:
        write, numeric = column_format(values_as or str(name), frame[name])
        columns.append((clean(name), numeric, [write(v) for v in frame[name]]))
    return columns


# --- the formats -----------------------------------------------------------------------------


def rich_table(frame: pd.DataFrame, title: str | None = None, values_as: str | None = None) -> Table:
    columns = formatted(frame, values_as)
    table = Table(title=plain(title) if title else None, header_style="bold")
    for header, numeric, _ in columns:
        table.add_column(plain(header), justify="right" if numeric else "left", no_wrap=header not in WRAPPING)
    for row in zip(*(cells for _, _, cells in columns)):
        table.add_row(*(Text(cell) for cell in row))
    return table


def markdown(frame: pd.DataFrame, values_as: str | None = None) -> str:
    columns = formatted(frame, values_as)
    header = "| " + " | ".join(h.replace("|", "\\|") for h, _, _ in columns) + " |"
    rule = "|" + "|".join("---:" if numeric else "---" for _, numeric, _ in columns) + "|"
    rows = ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in zip(*(c for _, _, c in columns))]
    return "\n".join([header, rule, *rows])


def csv(frame: pd.DataFrame) -> str:
    """The data (no number formats: spreadsheets read it), without control characters."""
    text = frame.map(lambda v: clean(v, multiline=True) if isinstance(v, str) else v)
    return text.rename(columns=lambda c: clean(c)).to_csv(index=False)


def html_table(frame: pd.DataFrame, css_class: str = "board") -> str:
    """An HTML table of `frame` in the terminal's formats, every header and cell escaped."""
    columns = formatted(frame)
    kinds = [("num" if numeric else "text") + (" wrap" if h in WRAPPING else "") for h, numeric, _ in columns]
    head = "".join(f'<th class="{k}">{html.escape(h)}</th>' for k, (h, _, _) in zip(kinds, columns))
    rows = ["<tr>" + "".join(f'<td class="{k}">{html.escape(cell)}</td>' for k, cell in zip(kinds, row)) + "</tr>"
            for row in zip(*(c for _, _, c in columns))]
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts (NaN -> null), floats to 15 significant digits."""
    return json.loads(frame.to_json(orient="records", double_precision=15))  # faithful: p-values can be 1e-9


def emit(
    console: Console, frame: pd.DataFrame, fmt: Format, document: dict[str, Any] | None = None,
    title: str | None = None, values_as: str | None = None,
) -> None:
    """Print `frame` in `fmt`. For json, `document` (with the rows under "rows") is printed instead."""
    if fmt == "json":
        payload = {**(document or {}), "rows": records(frame)}
        print(json.dumps(payload, indent=2, default=str))
    elif fmt == "csv":
        print(csv(frame), end="")
    elif fmt == "markdown":
        print(markdown(frame, values_as))
    else:
        console.print(rich_table(frame, title, values_as))


# --- a search's progress (`submit status`) --------------------------------------------------------

_BUDGET_SPENDS = {"jobs": ("jobs", "{:,.0f}"), "gpu_hours": ("GPU-hours", "{:,.3f}"), "usd": ("dollars", "${:,.4f}")}


def search_status(summary: Mapping[str, Any]) -> Group:
    """A search's progress (`shared.search.summary(...).as_json()`): its trials by where they
    stand, the budget spent against its limits, and ASHA's rungs as a table."""
    trials = (f"search {summary['method']}: {summary['count']} trials: {summary['done']} done, "
              f"{summary['running']} running, {summary['queued']} queued, {summary['planned']} planned "
              f"({summary['epochs_trained']:,} epochs trained)")
    parts: list[Any] = [Text.assemble(plain(trials), ("  complete", "bold green") if summary["complete"] else "")]
    if summary.get("budget"):
        parts.append(budget_line(summary["budget"]))
    if summary.get("rungs"):
        rungs = pd.DataFrame(summary["rungs"]).rename_axis("rung").reset_index()
        parts.append(rich_table(rungs, title="rungs (promoted: went on to the next rung)"))
    return Group(*parts)


def budget_line(budget: Mapping[str, Any]) -> Text:
    """`budget: jobs 9 of 30, GPU-hours 0.012, dollars $0.0065 of $1.0000` (each used, and its
    limit where the budget sets one), with `reached` once one is."""
    spent = []
    for name, (label, number) in _BUDGET_SPENDS.items():
        used, limit = budget[name]
        spent.append(f"{label} {number.format(used)}" + ("" if limit is None else f" of {number.format(limit)}"))
    line = Text(f"budget: {', '.join(spent)}")
    if budget["reached"]:
        line.append("  reached: no new jobs; running ones finish", style="bold yellow")
    return line
