"""`submit`: the study command line. Each command parses, calls `submitter.service`, renders.

Exit codes: 0 success, 1 failure (a missing resource, a failed study), 2 bad input.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, TypeVar

import pandas as pd
import typer
from rich.text import Text

from shared.backends.factory import open_backend
from shared.ports import Backend
from shared.errors import BadInputError, NotFoundError, SpotsweepError
from shared.paths import check_id
from shared.reconcile import ReconcilePolicy
from submitter import service
from submitter.leaderboard import for_table, gap_warning, leaderboard, matrix, models_seen_test, table_notes
from submitter.render import FORMATS, clean, data_console, emit, json_text, plain
from submitter.settings import SubmitterSettings

HELP = """spotsweep: run deep-learning studies as a job queue.

Exit codes: 0 success, 1 failure (missing queue/table/bucket, a failed command), 2 bad input,
130 interrupted (Ctrl-C, e.g. in `status --watch`). NO_COLOR turns colours off; `--format json`
outputs are documented by `submit schema`."""

app = typer.Typer(no_args_is_help=True, help=HELP, rich_markup_mode=None)
dataset_app = typer.Typer(no_args_is_help=True, help="Make, prepare and upload datasets.")
app.add_typer(dataset_app, name="dataset")
# Records and manifests are other people's data: both consoles print strings as text, never
# markup, and without control characters (submitter/render.py).
console = data_console()
errors = data_console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])
FormatOption = typer.Option("table", "--format", "-f", help="table, json, csv or markdown.")
StudyArgument = typer.Argument(None, help="Study id, id prefix or name (default: the most recent).")


class State:
    backend_name: str | None = None
    quiet: bool = False


@app.callback()
def main(
    backend: Optional[str] = typer.Option(None, "--backend", help="local or aws (default: SPOTSWEEP_BACKEND or local)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only results and errors."),
) -> None:
    State.backend_name, State.quiet = backend, quiet


def settings() -> SubmitterSettings:
    overrides = {"backend": State.backend_name} if State.backend_name else {}
    try:
        return SubmitterSettings(**overrides)
    except Exception as exc:
        raise BadInputError(str(exc).splitlines()[0], "settings") from None


def open_configured() -> Backend:
    return open_backend(settings())


def handled(func: F) -> F:
    """Map errors to one clear line and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BadInputError as exc:
            typer.echo(f"error: {clean(exc)}", err=True)  # one line, never wrapped: scripts grep it
            raise typer.Exit(2) from None
        except (NotFoundError, SpotsweepError) as exc:
            typer.echo(f"error: {clean(exc)}", err=True)  # errors can quote a record's data
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise BadInputError(f"unknown format {fmt!r} (use {', '.join(FORMATS)})", "--format")
    return fmt


def say(text: str) -> None:
    if not State.quiet:
        errors.print(plain(text, multiline=True))


# --- studies ---------------------------------------------------------------------------------


@app.command()
@handled
def study(
    file: Path = typer.Argument(..., help="The study file (sweep.json)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the jobs and an estimate; write nothing."),
    fmt: str = FormatOption,
) -> None:
    """Expand a study file into jobs and put them on the queue (again: only the missing ones)."""
    check_format(fmt)
    spec = service.load_study_file(file)
    config = settings()
    if dry_run:
        backend = open_backend(config) if config.backend == "local" and config.home.exists() else None
        plan = service.plan_study(spec, backend, config.price_per_hour)
        warn(plan.warnings)
        show_plan(spec, plan, fmt)
        return
    from shared.study import job_count
    from submitter.watch import progress_bar, progress_wanted

    with progress_bar(errors, "submitting", job_count(spec), progress_wanted(State.quiet)) as progress:
        report = service.submit_study(open_backend(config), spec, config.price_per_hour, progress, repair_policy(config))
    warn(report.warnings)
    repaired = report.repair.document() if report.repair else None
    doc = {"study_id": spec.study_id, "jobs": report.total, "created": report.created, "existing": report.existing,
           "sent": report.sent, "resent": report.resent, "repair": repaired, "warnings": report.warnings}
    if fmt == "json":
        print(json.dumps(doc, indent=2))
    else:
        console.print(Text.assemble("study ", plain(spec.study_id, "bold"),
                                    f": {report.total} jobs, {report.created} new, {report.existing} already there"))
        for line in report.repair.lines() if report.repair else []:
            say(f"repaired: {line}")


def show_plan(spec: Any, plan: service.Plan, fmt: str) -> None:
    """The dry run: the jobs enqueued at submission and the estimate; for a search that decides as
    results arrive (or has a budget), a last row for what is decided later and the upper bound."""
    if fmt == "json":
        print(json.dumps({"study_id": plan.study_id, "name": spec.name, "job_count": plan.job_count,
                          "estimate": plan.estimate, "dry_run": True, "warnings": plan.warnings,
                          "search": plan.search, "jobs": plan.jobs}, indent=2))
        return
    frame = service.plan_frame(plan.jobs, plan.search)
    emit(console, frame, fmt, title=f"{plan.study_id}: {plan.job_count} jobs now (dry run)")  # type: ignore[arg-type]
    if plan.search is None:
        say(f"estimate: {plan.estimate}")
        return
    title = "upper bound (running jobs finish past a budget's cap)"
    emit(console, service.bound_frame(plan.search), fmt, title=title)  # type: ignore[arg-type]


def warn(warnings: list[str]) -> None:
    """Each warning as one line on stderr, whatever the format and even with --quiet: a study
    that can only produce noise is worth a line before its money is spent."""
    for warning in warnings:
        typer.echo(f"warning: {clean(warning)}", err=True)


def repair_policy(config: SubmitterSettings) -> ReconcilePolicy:
    """The reconciler's policy for a repair a person asks for: no grace (a message sent before
    now may be the lost one), the configured failure limit."""
    return ReconcilePolicy.for_config(config, resend_grace_s=0.0)


@app.command()
@handled
def studies(fmt: str = FormatOption) -> None:
    """List studies with their counts, best score and spend."""
    check_format(fmt)
    backend = open_configured()
    rows = []
    for record in backend.store.list_studies():
        jobs = backend.store.list_jobs(record.study_id)
        best = max((j.metrics.val_accuracy for j in jobs if j.metrics.val_accuracy is not None), default=None)
        counts = pd.Series([j.status.value for j in jobs]).value_counts().to_dict()
        rows.append({"study_id": record.study_id, "name": record.name, "jobs": len(jobs),
                     "succeeded": counts.get("SUCCEEDED", 0), "failed": counts.get("FAILED", 0),
                     "best_val_accuracy": best, "cost_usd": round(sum(j.cost_usd for j in jobs), 6)})
    emit(console, pd.DataFrame(rows, columns=["study_id", "name", "jobs", "succeeded", "failed", "best_val_accuracy", "cost_usd"]), fmt)  # type: ignore[arg-type]


@app.command()
@handled
def status(
    study: Optional[str] = StudyArgument,
    fmt: str = FormatOption,
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh a live view until the study is finished (Ctrl-C: exit 130)."),
    interval: float = typer.Option(2.0, "--interval", min=0.1, help="Seconds between refreshes with --watch."),
) -> None:
    """Counts by state, spend so far, and the running jobs (stale leases flagged)."""
    check_format(fmt)
    backend = open_configured()
    config = settings()
    study_id = service.resolve_study_id(backend, study)
    if watch:
        if fmt != "table":
            raise BadInputError("--watch draws a live table; use it without --format", "--watch")
        from submitter.watch import watch as watch_status

        raise typer.Exit(watch_status(lambda: service.study_status(backend, study_id, config.stale_threshold_s), console, interval))
    report = service.study_status(backend, study_id, config.stale_threshold_s)
    tested = models_seen_test(backend.store.list_jobs(study_id))  # the test split is spent a little by each
    if fmt == "table":
        from submitter.watch import render_status

        console.print(render_status(report))  # one frame of `--watch`
        if report.failed:
            emit(console, pd.DataFrame(report.failed), "table", title="failed (submit retry --failed runs them again)")
        console.print(f"test split: seen by {tested} model{'s' if tested != 1 else ''} of this study")
        return
    running = pd.DataFrame(report.running, columns=["job_id", "kind", "architecture", "optimizer", "attempt", "epoch", "epochs", "val_accuracy", "worker", "heartbeat_age_s", "stale"])
    emit(console, running, fmt, document=report.document() | {"models_seen_test": tested})  # type: ignore[arg-type]


@app.command("leaderboard")
@handled
def leaderboard_command(
    study: Optional[str] = StudyArgument,
    top: Optional[int] = typer.Option(None, "--top", help="Only the best N rows."),
    by: str = typer.Option("val_accuracy", "--by", help="Metric to rank by (val_accuracy, val_loss, test_accuracy, cost_usd...)."),
    kind: Optional[str] = typer.Option(None, "--kind", help="train, finetune or evaluate."),
    matrix_axes: Optional[tuple[str, str]] = typer.Option(None, "--matrix", help="ROW COL: the best score of each pair, e.g. architecture optimizer."),
    fmt: str = FormatOption,
) -> None:
    """Configurations best first by the mean over their repeats, each accuracy with its 95% interval,
    the rows tied with #1 marked, and the validation-test gap once models are evaluated."""
    check_format(fmt)
    if top is not None:
        service.check_top(top)
    if kind not in (None, "train", "finetune", "evaluate"):
        raise BadInputError(f"unknown kind {kind!r} (train, finetune, evaluate)", "--kind")
    backend = open_configured()
    study_id = service.resolve_study_id(backend, study)
    records = backend.store.list_jobs(study_id)  # all kinds: evaluations give their models' rows a test score
    if matrix_axes:
        records = [r for r in records if kind is None or r.kind == kind]
        try:
            frame = matrix(records, *matrix_axes, metric=by)
        except KeyError as exc:
            raise BadInputError(f"unknown column {exc.args[0]!r}", "--matrix") from None
        emit(console, frame, fmt, document={"study_id": study_id, "matrix": list(matrix_axes), "metric": by},  # type: ignore[arg-type]
             title=f"best {by}", values_as=by)
        return
    spec = service.stored_spec(backend.store.get_study(study_id))
    trials = service.trials_of(spec, records)  # a search's jobs: their trial and rung
    frame = leaderboard(records, by, kind, top, artifacts=backend.artifacts, trials=trials)
    if fmt != "table":  # the key is the record's; beside it, where a person finds the model
        frame = frame.assign(checkpoint_uri=[service.display_uri(backend.artifacts, k) for k in frame["checkpoint"]])
    shown = for_table(frame, by) if fmt == "table" else frame
    document = {"study_id": study_id, "by": by, "gap_warning": gap_warning(frame) if len(frame) else None}
    emit(console, shown, fmt, document=document, title=f"{study_id} by {by}")  # type: ignore[arg-type]
    if fmt in ("table", "markdown"):  # how to read it: what is sorted by, the intervals, ties, the gap
        for note in table_notes(frame, by):
            console.print(plain(note), soft_wrap=True)


@app.command()
@handled
def compare(
    a: str = typer.Argument(..., help="A job id."),
    b: str = typer.Argument(..., help="Another job id."),
    split: str = typer.Option("val", "--split", help="val (the jobs' best epochs) or test (their models' evaluations)."),
    fmt: str = FormatOption,
) -> None:
    """Two jobs on the same examples: on how many each alone is right, and the exact McNemar p-value."""
    check_format(fmt)
    from submitter.compare import SPLITS, compare_jobs

    if split not in SPLITS:
        raise BadInputError(f"unknown split {split!r} (val or test)", "--split")
    result = compare_jobs(open_configured(), a, b, split)
    if fmt == "json":
        print(json.dumps(result.document(), indent=2))
    elif fmt == "table":
        console.print(plain(result.sentence()), soft_wrap=True)
    else:
        emit(console, pd.DataFrame([result.document()]), fmt)  # type: ignore[arg-type]


@app.command()
@handled
def finetune(
    study: Optional[str] = StudyArgument,
    top: int = typer.Option(1, "--top", help="Fine-tune the best K training jobs."),
    unfreeze_from: Optional[str] = typer.Option(None, "--unfreeze-from", help="Layer index, negative index or name (default: the top block)."),
) -> None:
    """Enqueue fine-tuning of the best models (SGD lr 1e-4, momentum 0.9, top layers unfrozen)."""
    service.check_top(top)
    backend = open_configured()
    study_id = service.resolve_study_id(backend, study)
    report = service.finetune(backend, study_id, top, service.parse_layer(unfreeze_from))
    console.print(f"{report.created} finetune jobs enqueued ({report.existing} already there)")


@app.command()
@handled
def evaluate(
    target: Optional[str] = typer.Argument(None, help="STUDY or JOB id (default: the most recent study)."),
    top: int = typer.Option(3, "--top", help="Evaluate the best K models on the test split."),
    fmt: str = FormatOption,
) -> None:
    """Enqueue one evaluation on the held-out test split of the best models (or of one job).
    A model already evaluated is not evaluated again: its recorded result is shown."""
    check_format(fmt)
    service.check_top(top)
    backend = open_configured()
    job = backend.store.find_job(target) if target else None
    study_id = job.study_id if job else service.resolve_study_id(backend, target)
    report = service.evaluate(backend, study_id, top, job.job_id if job else None)
    rows = [vars(evaluation) for evaluation in report.evaluations]
    if fmt == "json":
        print(json.dumps({"study_id": study_id, "created": report.created, "existing": report.existing,
                          "sent": report.sent, "evaluations": rows}, indent=2))
        return
    if fmt != "table":
        emit(console, pd.DataFrame(rows, columns=EVALUATION_COLUMNS), fmt)  # type: ignore[arg-type]
        return
    console.print(f"{report.created} evaluate jobs enqueued ({report.existing} already there)")
    for evaluation in report.evaluations:
        console.print(plain(evaluation_line(evaluation)), soft_wrap=True)


EVALUATION_COLUMNS = ["model_job_id", "evaluation_job_id", "status", "test_accuracy", "test_loss", "test_examples", "error"]


def evaluation_line(evaluation: service.Evaluation) -> str:
    """One model's evaluation: its status ("job A: evaluation B QUEUED"), or the recorded result
    ("job A: evaluation B (recorded): test accuracy 0.8125 on 64 examples (95% interval [0.700, 0.890])")."""
    head = f"job {evaluation.model_job_id}: evaluation {evaluation.evaluation_job_id}"
    if evaluation.status != "SUCCEEDED" or evaluation.test_accuracy is None:
        return f"{head} {evaluation.status}" + (f": {evaluation.error}" if evaluation.error else "")
    from submitter.leaderboard import wilson

    low, high = wilson(evaluation.test_accuracy, evaluation.test_examples)
    interval = f" (95% interval [{low:.3f}, {high:.3f}])" if low is not None and high is not None else ""
    examples = f" on {evaluation.test_examples} examples" if evaluation.test_examples else ""
    return f"{head} (recorded): test accuracy {evaluation.test_accuracy:.4f}{examples}{interval}"


@app.command()
@handled
def retry(
    study: Optional[str] = StudyArgument,
    failed: bool = typer.Option(False, "--failed", help="Re-enqueue FAILED jobs (the default)."),
    dead_lettered: bool = typer.Option(False, "--dead-lettered", help="Repair the study (as `submit repair STUDY`): re-drive its dead-lettered jobs."),
) -> None:
    """Re-enqueue jobs from their records. Idempotent."""
    backend = open_configured()
    study_id = service.resolve_study_id(backend, study)
    retried = service.retry(backend, study_id, failed=failed or not dead_lettered, dead_lettered=dead_lettered,
                            policy=repair_policy(settings()))
    console.print(f"{len(retried)} jobs re-enqueued")


@app.command()
@handled
def repair(
    study: Optional[str] = typer.Argument(None, help="Study id, id prefix or name (default: every study)."),
    fmt: str = FormatOption,
) -> None:
    """Run the reconciler now: send lost or never-sent messages, re-drive dead letters (or record
    them FAILED at the failure limit), start due follow-ups. Idempotent; workers run it when idle."""
    check_format(fmt)
    backend = open_configured()
    study_id = service.resolve_study_id(backend, study) if study else None
    report = service.repair(backend, study_id, repair_policy(settings()))
    if fmt == "json":
        print(json.dumps(report.document(), indent=2))
        return
    if fmt != "table":
        rows = [{"action": k, "count": v["count"], "ids": " ".join(v["ids"])} for k, v in report.document().items() if "count" in v]
        emit(console, pd.DataFrame(rows), fmt)  # type: ignore[arg-type]
        return
    for line in report.lines() or ["nothing to repair"]:
        console.print(plain(line), soft_wrap=True)
    for error in report.errors:
        console.print(plain(f"error: {error}"), soft_wrap=True)


@app.command()
@handled
def cancel(study: Optional[str] = StudyArgument) -> None:
    """Cancel a study: queued jobs are cancelled, running ones stop at their next epoch, and no
    follow-up starts. Idempotent."""
    backend = open_configured()
    study_id = service.resolve_study_id(backend, study)
    result = service.cancel(backend, study_id)
    console.print(f"{result['cancelled']} jobs cancelled, {result['stopping']} running jobs asked to stop")


@app.command()
@handled
def logs(
    job_id: str = typer.Argument(..., help="A job id."),
    raw: bool = typer.Option(False, "--json", help="The lines as the workers wrote them (JSON, one a line)."),
) -> None:
    """A job's log lines from the artifact store, every attempt in order (they outlive the instance)."""
    from submitter.logs import job_log_lines

    backend = open_configured()
    record = backend.store.find_job(check_id(job_id, "job id"))
    if record is None:
        raise BadInputError(f"unknown job {job_id!r}", "JOB")
    lines = job_log_lines(backend.artifacts, record)
    if not lines:
        say(f"no log lines for {job_id} yet (a job's log is written after each epoch and when it settles)")
    for line in lines:
        typer.echo(json.dumps({"attempt": line.attempt, **line.fields}) if raw else clean(line.text()))


@app.command()
@handled
def show(job_id: str = typer.Argument(..., help="A job id."), fmt: str = FormatOption) -> None:
    """One job: its spec, record, epochs and artifact locations."""
    check_format(fmt)
    backend = open_configured()
    record = backend.store.find_job(job_id)
    if record is None:
        raise BadInputError(f"unknown job {job_id!r}", "JOB")
    epochs = pd.DataFrame([{"epoch": e.epoch, "attempt": e.attempt, **e.metrics, "seconds": round(e.seconds, 2)} for e in backend.store.epochs(record.study_id, job_id)])
    uris = service.artifact_uris(record, backend.artifacts)  # the record holds keys; these are for people
    if fmt == "table":
        console.print(json_text(record.model_dump(mode="json", exclude={"spec"})))
        console.print(json_text(record.spec.model_dump(mode="json")))
        console.print(json_text(uris))
        if len(epochs):
            emit(console, epochs, "table", title="epochs")
        return
    emit(console, epochs, fmt, document={"job": json.loads(record.model_dump_json()), **uris})  # type: ignore[arg-type]


@app.command()
@handled
def init() -> None:
    """Create the queue, dead-letter queue, table and bucket if missing (idempotent)."""
    config = settings()
    if config.backend == "local":
        backend = open_backend(config)
        console.print(f"embedded backend ready in {config.home.resolve()} ({type(backend.queue).__name__})")
        return
    from shared.backends.aws import provision

    for line in provision(config, None):
        console.print(line)


deploy_app = typer.Typer(no_args_is_help=True, help="Publish code the AWS stack runs (terraform/README.md).")
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("reconciler")
@handled
def deploy_reconciler(
    source: Optional[Path] = typer.Option(None, "--source", help="The spotsweep checkout to build from (default: this one)."),
) -> None:
    """Build the scheduled reconciler's Lambda package and upload it to the stack's bucket; prints
    its key, for `terraform apply -var reconciler_package_key=KEY`."""
    from submitter.deploy import publish_reconciler

    def progress(line: str) -> None:  # unwrapped, on stderr: stdout is the key alone (KEY=$(...))
        if not State.quiet:
            typer.echo(clean(line), err=True)

    key = publish_reconciler(settings(), source, progress=progress)
    print(key)
    progress(f"next: terraform apply -var reconciler_package_key={key}")


@deploy_app.command("worker")
@handled
def deploy_worker(
    source: Optional[Path] = typer.Option(None, "--source", help="The spotsweep checkout to build from (default: this one)."),
) -> None:
    """Build the worker's wheel from this checkout and upload it to the stack's bucket with the
    pointer deploy/worker-wheel.txt: instances that boot from now on install it. Prints its key."""
    from submitter.deploy import publish_worker

    def progress(line: str) -> None:  # on stderr: stdout is the key alone
        if not State.quiet:
            typer.echo(clean(line), err=True)

    published = publish_worker(settings(), source, progress=progress)
    print(published.key)
    progress("instances launched from now on install it; running ones keep theirs")


# --- datasets --------------------------------------------------------------------------------


@dataset_app.command("synth")
@handled
def dataset_synth(
    out: Path = typer.Argument(..., help="Where to write class-named image folders."),
    classes: int = typer.Option(5, "--classes", min=2, max=500),
    per_class: int = typer.Option(40, "--per-class", min=2),
    size: int = typer.Option(64, "--size", min=16, max=1024),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Draw a small synthetic flower dataset (no download needed)."""
    from shared.datasets import synthesize

    path = synthesize(out, classes=classes, per_class=per_class, size=size, seed=seed)
    console.print(f"{classes} classes x {per_class} images of {size}px in {path}")


@dataset_app.command("prepare")
@handled
def dataset_prepare(
    src: Path = typer.Argument(..., help="A folder of class-named image folders."),
    out: Path = typer.Argument(..., help="The prepared dataset (train/, test/, manifest.json)."),
    test_fraction: float = typer.Option(0.2, "--test-fraction"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Split into train and a stratified held-out test set, with a checksummed manifest."""
    from shared.datasets import prepare
    from submitter.watch import progress_bar, progress_wanted

    with progress_bar(errors, "preparing", None, progress_wanted(State.quiet)) as progress:
        manifest = prepare(src, out, test_fraction=test_fraction, seed=seed, progress=progress)
    train, test = len(manifest.split("train")), len(manifest.split("test"))
    console.print(f"{len(manifest.classes)} classes, {train} train / {test} test images in {out} (checksum {manifest.checksum[:12]})")


@dataset_app.command("upload")
@handled
def dataset_upload(
    directory: Path = typer.Argument(..., help="A prepared dataset."),
    destination: str = typer.Argument(..., help="s3://BUCKET/PREFIX (or a prefix in the artifact store)."),
) -> None:
    """Upload a prepared dataset, skipping files already there with the same checksum."""
    from shared.datasets import upload
    from shared.datasets.sync import is_store_location, store_prefix
    from submitter.watch import progress_bar, progress_wanted

    backend = open_configured()
    try:
        prefix = store_prefix(destination, backend.artifacts)  # the store's one parser of locations
    except BadInputError as exc:
        raise BadInputError(str(exc), "DESTINATION") from None
    with progress_bar(errors, "uploading", None, progress_wanted(State.quiet)) as progress:
        report = upload(directory, backend.artifacts, prefix, progress=progress)
    console.print(f"{report}")
    reference = destination.rstrip("/") if is_store_location(destination) else f"artifacts:{prefix}"
    console.print(f"use \"dataset\": \"{reference}\" in your study file")


# --- report, export, predict, schemas ----------------------------------------------------------


@app.command()
@handled
def report(
    study: Optional[str] = StudyArgument,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory for the PNGs and report.html (default: report-STUDY)."),
    top: int = typer.Option(5, "--top", help="Learning curves of the best N configurations."),
    fmt: str = FormatOption,
) -> None:
    """Plots (learning curves, heatmap, accuracy vs cost/time, evaluation, sweeps) and report.html."""
    check_format(fmt)
    service.check_top(top)
    from submitter.report import build_report

    backend = open_configured()
    study_id = service.resolve_study_id(backend, study)
    # a study id comes from a record: checked before it names a directory (no `x/../../target`)
    result = build_report(backend, study_id, out or Path(f"report-{check_id(study_id, 'study id')}"), top=top)
    files = [str(f) for f in result.files]
    if fmt == "json":
        print(json.dumps({"study_id": study_id, "out": str(result.out_dir), "html": str(result.html), "files": files}, indent=2))
    elif fmt == "table":
        for name in files:
            console.print(name, highlight=False, soft_wrap=True)
        say(f"open {result.html}")
    else:
        emit(console, pd.DataFrame({"file": files}), fmt)  # type: ignore[arg-type]


@app.command()
@handled
def export(
    job_id: str = typer.Argument(..., help="A job id (train, finetune, or evaluate: its model)."),
    out: Path = typer.Option(Path("model.keras"), "--out", "-o", help="A .keras file, or a directory for JOB.keras."),
    fmt: str = FormatOption,
) -> None:
    """Copy a job's best model out of the artifact store, with its class names beside it."""
    check_format(fmt)
    from submitter.report import export_model

    result = export_model(open_configured(), job_id, out)
    if fmt == "json":
        print(json.dumps({"job_id": result.job_id, "path": str(result.path),
                          "classes_file": str(result.classes_file) if result.classes_file else None,
                          "classes": result.classes}, indent=2))
        return
    console.print(str(result.path), highlight=False, soft_wrap=True)
    say(f"classes in {result.classes_file}" if result.classes_file else "class names unknown: the job's dataset is not reachable")


@app.command()
@handled
def predict(
    job_id: str = typer.Argument(..., help="A job id: its best model predicts."),
    images: list[Path] = typer.Argument(..., help="Image files."),
    top: int = typer.Option(3, "--top", help="Classes per image."),
    fmt: str = FormatOption,
) -> None:
    """Top-k classes with probabilities per image (runs `worker predict`: TensorFlow stays out of `submit`)."""
    import subprocess

    check_format(fmt)
    service.check_top(top)
    command = [sys.executable, "-m", "worker", "predict", "--job", job_id, "--top", str(top), *map(str, images)]
    if State.backend_name:
        command += ["--backend", State.backend_name]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")] or result.stderr.strip().splitlines()[-1:]
        typer.echo("\n".join(map(clean, lines)) or f"error: worker predict exited {result.returncode}", err=True)
        raise typer.Exit(result.returncode if result.returncode in (1, 2) else 1)
    document = json.loads(result.stdout)
    rows = pd.DataFrame([
        {"image": p["image"], "rank": i + 1, "class": c["class"], "probability": c["probability"]}
        for p in document["predictions"] for i, c in enumerate(p["top"])
    ], columns=["image", "rank", "class", "probability"])
    emit(console, rows, fmt, document={k: v for k, v in document.items()}, title=f"job {job_id}")  # type: ignore[arg-type]


@app.command()
@handled
def schema(name: Optional[str] = typer.Argument(None, help="A document name; none: list them.")) -> None:
    """The JSON Schema of a `--format json` output (shared/schemas.py)."""
    from shared.schemas import DOCUMENTS

    if name is None:
        for key, model in DOCUMENTS.items():
            console.print(f"{key:12s} {(model.__doc__ or '').strip().splitlines()[0]}", highlight=False)
        return
    if name not in DOCUMENTS:
        raise BadInputError(f"unknown document {name!r} (one of {', '.join(DOCUMENTS)})", "NAME")
    print(json.dumps(DOCUMENTS[name].model_json_schema(by_alias=True), indent=2))


def run() -> None:  # pragma: no cover - console script shim
    app(prog_name="submit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
