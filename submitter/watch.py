"""Terminal views: the live study status (`submit status --watch`) and progress bars for long commands.

`render_status` is pure (a StudyStatus in, a rich renderable out); `watch` is the refresh loop.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from submitter.render import plain, search_status
from submitter.service import StudyStatus

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
STATE_STYLES = {"QUEUED": "cyan", "RUNNING": "yellow", "SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "magenta"}
FINISHED_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")


def duration(seconds: float | None) -> str:
    """12s, 3m 05s, 2h 07m."""
    if seconds is None:
        return "unknown"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def render_status(status: StudyStatus) -> RenderableType:
    """The study at a glance: counts by state, a progress bar, spend and ETA, queue and DLQ depth,
    and the running jobs (epoch k/N, last val_accuracy, heartbeat age; stale leases flagged)."""
    done = sum(status.counts.get(s, 0) for s in FINISHED_STATES)
    title = Text.assemble(("study ", "bold"), plain(status.study_id, "bold"),
                          plain(f"  {status.name}") if status.name != status.study_id else "")
    if status.finished:
        title.append("  finished", style="bold green")

    counts = Table.grid(padding=(0, 2))
    counts.add_row(*(Text(f"{state.lower()} {count}", style=STATE_STYLES.get(state, "") if count else "dim")
                     for state, count in status.counts.items()))

    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(status.total, 1), completed=done, width=40),
        Text(f"{done}/{status.total} finished" + (f" ({100 * done / status.total:.0f}%)" if status.total else "")),
    )

    dead = status.queue.get("dead_lettered", 0)
    money = Text.assemble(
        f"spend ${status.cost_usd:.4f} ({duration(status.train_seconds)} of training)   ",
        f"ETA {'done' if status.finished else duration(status.eta_s)}   ",
        f"queue {status.queue.get('visible', 0)} waiting, {status.queue.get('in_flight', 0)} in flight   ",
        (f"DLQ {dead}", "bold red" if dead else ""),
    )
    if status.stale:
        money.append(f"   {status.stale} stale lease{'s' if status.stale != 1 else ''}", style="bold yellow")

    parts: list[RenderableType] = [title, counts, bar, money]
    if status.search:  # a search's trials, budget and rungs (submitter/render.py)
        parts.append(search_status(status.search))
    if status.running:
        parts.append(_running_table(status))
    elif not status.finished:
        parts.append(Text("no jobs running", style="dim"))
    return Group(*parts)


def _running_table(status: StudyStatus) -> Table:
    table = Table(title="running", title_justify="left", header_style="bold", expand=False)
    for name, justify in (("job", "left"), ("kind", "left"), ("model", "left"), ("optimizer", "left"),
                          ("epoch", "right"), ("val_acc", "right"), ("worker", "left"), ("heartbeat", "right"),
                          ("attempt", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in status.running:
        epochs = f"{row.get('epoch', 0)}/{row.get('epochs', '?')}"
        accuracy = f"{row['val_accuracy']:.4f}" if row.get("val_accuracy") is not None else "-"
        age = row.get("heartbeat_age_s")
        heartbeat = Text(duration(age) if age is not None else "never")
        if row.get("stale"):
            heartbeat = Text.assemble(heartbeat, (" STALE", "bold yellow"))
        # every field of a record is someone's data: text, never markup (submitter/render.py)
        table.add_row(plain(row["job_id"]), plain(row.get("kind", "")), plain(row.get("architecture", "")),
                      plain(row.get("optimizer", "")), plain(epochs), accuracy, plain(row.get("worker") or "-"), heartbeat,
                      plain(row.get("attempt", "")))
    return table


def watch(
    fetch: Callable[[], StudyStatus],
    console: Console,
    interval_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Redraw the status every `interval_s` until the study is finished (0) or Ctrl-C (130)."""
    try:
        status = fetch()
        with Live(render_status(status), console=console, auto_refresh=False, transient=False) as live:
            while not status.finished:
                sleep(interval_s)
                status = fetch()
                live.update(render_status(status), refresh=True)
        return 0
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# --- progress bars ------------------------------------------------------------------------------


def progress_wanted(quiet: bool) -> bool:
    """Bars only for a person at a terminal: never with --quiet or when stdout is piped."""
    return not quiet and sys.stdout.isatty()


@contextmanager
def progress_bar(console: Console, description: str, total: int | None, enabled: bool) -> Iterator[Callable[..., None] | None]:
    """A rich progress bar on `console` (stderr). Yields a callback that takes either
    `(count_done_now)` (added) or `(done, total)` (absolute), or None when disabled."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)

        def update(done: int, total_now: int | None = None) -> None:
            if total_now is None:
                progress.advance(task, done)
            else:
                progress.update(task, completed=done, total=total_now)

        yield update
