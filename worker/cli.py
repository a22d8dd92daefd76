"""`worker`: the job loop's command line. Thin: parse, call `worker.loop`, report.

Exit codes: 0 done, 1 failure (a missing queue/table/bucket, a fatal error), 2 bad input.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from shared.backends.factory import open_backend
from shared.ports import Backend
from shared.errors import BadInputError, FatalError, SpotsweepError
from worker import logs
from worker.imds import Imds, SpotWatcher, on_ec2
from worker.loop import Policy, Worker
from worker.settings import WorkerSettings
from worker.stop import ColdStop, StopFlag

app = typer.Typer(no_args_is_help=True, add_completion=False, help="spotsweep worker: pull jobs from the queue and train them.")
log = logging.getLogger("spotsweep.worker")


@app.callback()
def main() -> None:
    """spotsweep worker."""


@app.command()
def run(
    until_empty: bool = typer.Option(False, "--until-empty", help="Exit once the queue has no visible or in-flight messages."),
    max_jobs: Optional[int] = typer.Option(None, "--max-jobs", min=1, help="Exit after this many jobs."),
    concurrency: int = typer.Option(1, "--concurrency", min=1, max=64, help="Worker processes to run on this machine."),
    idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout", min=0, help="Exit (and leave the autoscaling group on AWS) after this many idle seconds."),
    backend: Optional[str] = typer.Option(None, "--backend", help="local or aws (default: SPOTSWEEP_BACKEND)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Dataset cache and scratch (default: $SPOTSWEEP_HOME/cache)."),
    log_format: Optional[str] = typer.Option(None, "--log-format", help="human or json."),
) -> None:
    """Receive jobs, claim them, train them, record results; warm stop on SIGTERM/SIGINT, cold on the second."""
    overrides = {k: v for k, v in {"backend": backend, "cache_dir": cache_dir, "log_format": log_format}.items() if v}
    settings = _settings(**overrides)
    logs.configure(settings.log_format)
    policy = Policy(until_empty=until_empty, max_jobs=max_jobs, idle_timeout_s=idle_timeout)
    if concurrency > 1:
        raise typer.Exit(_run_processes(concurrency))
    raise typer.Exit(_run_one(settings, policy))


def _settings(**overrides: Any) -> WorkerSettings:
    try:
        return WorkerSettings(**overrides)
    except Exception as exc:
        lines = str(exc).splitlines()
        typer.echo(f"error: bad worker settings: {' '.join(line.strip() for line in lines[1:3])}", err=True)
        raise typer.Exit(2) from None


def _run_one(settings: WorkerSettings, policy: Policy) -> int:
    stop = StopFlag()
    stop.install()
    try:
        backend = open_backend(settings)
        worker = _build_worker(settings, backend, stop)
        worker.work(policy)
    except ColdStop as exc:
        log.warning("cold stop: %s", exc, extra={"event": "cold_stop"})
        return 1
    except BadInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except (FatalError, SpotsweepError) as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    return 1 if (stop.reason or "").startswith("fatal") else 0


def _build_worker(settings: WorkerSettings, backend: Backend, stop: StopFlag) -> Worker:
    from worker.pricing import price_per_hour
    from worker.training import run_job  # TensorFlow loads here, not at `worker --help`

    imds = Imds(settings.metadata_url) if settings.metadata_url or on_ec2() else None
    if imds is not None:
        SpotWatcher(imds, stop, settings.spot_poll_s).start()
    guard = _scale_in_guard(settings, imds)
    ec2 = _aws_client("ec2", settings) if imds is not None and settings.backend == "aws" else None
    return Worker(
        backend, settings, run_job, stop,
        price_per_hour=price_per_hour(settings.price_per_hour, imds, ec2),
        on_idle_exit=guard.leave if guard else None,
        protect=guard.protect if guard else None,
    )


def _aws_client(service: str, settings: WorkerSettings) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(service, region_name=settings.region, config=Config(retries={"mode": "standard"}))


def _scale_in_guard(settings: WorkerSettings, imds: Imds | None) -> Any:
    if not settings.asg_name or imds is None:
        return None
    from worker.asg import ScaleInGuard

    instance_id = imds.get("instance-id")
    return ScaleInGuard(_aws_client("autoscaling", settings), settings.asg_name, instance_id) if instance_id else None


def _run_processes(count: int) -> int:
    """Run `count` single-process workers with the same arguments; forward signals to them."""
    argv = _strip_concurrency(sys.argv[1:])
    children = [subprocess.Popen([sys.executable, "-m", "worker", *argv], env=os.environ.copy()) for _ in range(count)]

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    codes = [child.wait() for child in children]
    return max(codes)


def _strip_concurrency(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--concurrency":
            skip = True
        elif not arg.startswith("--concurrency="):
            out.append(arg)
    return out


@app.command()
def predict(
    images: list[Path] = typer.Argument(..., help="Image files (PNG, JPEG, GIF, BMP)."),
    model: Optional[Path] = typer.Option(None, "--model", help="A .keras model (e.g. from `submit export`)."),
    job: Optional[str] = typer.Option(None, "--job", help="A job id: its best checkpoint, and its dataset's class names."),
    classes_from: Optional[Path] = typer.Option(None, "--classes-from", help="A prepared dataset dir or a classes JSON file."),
    top: int = typer.Option(3, "--top", min=1, help="Classes per image."),
    backend: Optional[str] = typer.Option(None, "--backend", help="local or aws (with --job; default: SPOTSWEEP_BACKEND)."),
) -> None:
    """Top-k classes with probabilities for each image, as JSON (the model loads with safe_mode=True)."""
    import json

    from worker.predict import run as run_predict  # TensorFlow loads here

    settings = _settings(**({"backend": backend} if backend else {}))
    try:
        document = run_predict(lambda: open_backend(settings), model, job, classes_from, list(images), top)
    except BadInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except SpotsweepError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    print(json.dumps(document, indent=2))
