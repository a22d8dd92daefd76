"""`worker`: the job loop's command line (and `predict`, and `weights` for frozen bases). Thin:
parse, call `worker.loop` or `worker.training`, report.

Exit codes: 0 done, 1 failure (a missing queue/table/bucket, a fatal error), 2 bad input, 3
stopped without leaving its autoscaling group. In a group (AWS, `SPOTSWEEP_ASG_NAME`), 0 means
the instance left the group (idle, or a spot notice after the job was put back): the systemd
unit ends cleanly and the instance terminates. A stop that has not left (the group is at its
`min_size`, a leave call failed, a signal, `--max-jobs`) is 3, which the unit restarts: the
instance keeps working instead of idling, paid, with no worker.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer

from shared.architectures import ARCHITECTURES
from shared.backends.factory import open_backend
from shared.datasets.images import set_pixel_limit
from shared.ports import Backend
from shared.errors import BadInputError, FatalError, SpotsweepError
from shared.jobs import ModelSpec
from worker import logs
from worker.asg import ScaleInGuard
from worker.gpu import machine_gpus, per_gpu_envs, prepare_gpus
from worker.housekeeping import Housekeeper
from worker.imds import Imds, SpotWatcher, on_ec2
from worker.loop import Policy, Worker
from worker.processes import run_processes
from worker.settings import WorkerSettings
from worker.stop import ColdStop, StopFlag

app = typer.Typer(no_args_is_help=True, add_completion=False, help="spotsweep worker: pull jobs from the queue and train them.")
weights_app = typer.Typer(no_args_is_help=True, help="Pretrained weights for frozen bases: ImageNet's, or calibrated ones.")
app.add_typer(weights_app, name="weights")
log = logging.getLogger("spotsweep.worker")
EXIT_NOT_LEFT = 3  # stopped, still in its autoscaling group: systemd starts the worker again


@app.callback()
def main() -> None:
    """spotsweep worker."""


@app.command()
def run(
    until_empty: bool = typer.Option(False, "--until-empty", help="Exit once the queue has no visible or in-flight messages."),
    max_jobs: Optional[int] = typer.Option(None, "--max-jobs", min=1, help="Exit after this many jobs."),
    concurrency: int = typer.Option(1, "--concurrency", min=1, max=64, help="Worker processes to run on this machine."),
    per_gpu: bool = typer.Option(False, "--per-gpu", help="One worker process per GPU (nvidia-smi -L), each pinned to its own; overrides --concurrency."),
    idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout", min=0, help="Exit (and leave the autoscaling group on AWS) after this many idle seconds."),
    backend: Optional[str] = typer.Option(None, "--backend", help="local or aws (default: SPOTSWEEP_BACKEND)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Dataset cache and scratch (default: $SPOTSWEEP_HOME/cache)."),
    log_format: Optional[str] = typer.Option(None, "--log-format", help="human or json."),
) -> None:
    """Receive jobs, claim them, train them, record results; warm stop on SIGTERM/SIGINT, cold on the second."""
    overrides = {k: v for k, v in {"backend": backend, "cache_dir": cache_dir, "log_format": log_format}.items() if v}
    settings = _settings(**overrides)
    logs.configure(settings.log_format)
    set_pixel_limit(settings.max_image_pixels)  # every image this process decodes is checked against it
    policy = Policy(until_empty=until_empty, max_jobs=max_jobs, idle_timeout_s=idle_timeout)
    if per_gpu:
        raise typer.Exit(_run_per_gpu(settings, policy))
    if concurrency > 1:
        raise typer.Exit(run_processes(concurrency, _strip_concurrency(sys.argv[1:])))
    raise typer.Exit(_run_one(settings, policy))


def _settings(**overrides: Any) -> WorkerSettings:
    try:
        return WorkerSettings(**overrides)
    except Exception as exc:
        lines = str(exc).splitlines()
        typer.echo(f"error: bad worker settings: {' '.join(line.strip() for line in lines[1:3])}", err=True)
        raise typer.Exit(2) from None


def _run_per_gpu(settings: WorkerSettings, policy: Policy) -> int:
    """One child per GPU with CUDA_VISIBLE_DEVICES=<i>; one worker in this process when
    nvidia-smi lists none (a CPU machine runs the same unit)."""
    count = len(machine_gpus())
    if count == 0:
        log.warning("--per-gpu: nvidia-smi lists no GPU; running one worker", extra={"event": "no_gpus"})
        return _run_one(settings, policy)
    log.info("starting %d worker processes, one per GPU", count, extra={"event": "per_gpu", "data": {"gpus": count}})
    argv = [arg for arg in _strip_concurrency(sys.argv[1:]) if arg != "--per-gpu"]
    return run_processes(count, argv, per_gpu_envs(os.environ.copy(), count))


def _run_one(settings: WorkerSettings, policy: Policy) -> int:
    stop = StopFlag()
    stop.install()
    guard: ScaleInGuard | None = None
    try:
        # What killed workers left (temp files, work dirs), and the caches cut to cache_max_bytes.
        Housekeeper(settings.resolved_cache_dir, settings.cache_max_bytes).sweep()
        pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
        if pinned is not None:
            log.info("worker process pinned to CUDA_VISIBLE_DEVICES=%s", pinned, extra={"event": "gpu_pinned", "data": {"cuda_visible_devices": pinned}})
        backend = open_backend(settings)
        worker, guard = _build_worker(settings, backend, stop)
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
    return exit_status(stop.reason, guard)


def exit_status(stop_reason: str | None, guard: ScaleInGuard | None) -> int:
    """The worker's exit status once its loop ended (see the module docstring). A spot notice
    (rebalance or interruption) stopped it after its job was checkpointed and settled: it
    leaves now rather than idle, paid, with its unit ended (the backlog's scaling policy adds
    capacity where there is some)."""
    if (stop_reason or "").startswith("fatal"):
        return 1
    if guard is None:  # not in an autoscaling group: done is done
        return 0
    if (stop_reason or "").startswith("spot") and not guard.left:
        guard.leave()
    return 0 if guard.left else EXIT_NOT_LEFT


def _build_worker(settings: WorkerSettings, backend: Backend, stop: StopFlag) -> tuple[Worker, ScaleInGuard | None]:
    from worker.pricing import price_per_hour
    from worker.training import JobRunner  # TensorFlow loads here, not at `worker --help`

    prepare_gpus(settings.require_gpu)  # before any TensorFlow op; refuses a GPU machine whose TensorFlow sees none
    imds = Imds(settings.metadata_url) if settings.metadata_url or on_ec2() else None
    if imds is not None:
        SpotWatcher(imds, stop, settings.spot_poll_s).start()
    guard = _scale_in_guard(settings, imds)
    ec2 = _aws_client("ec2", settings) if imds is not None and settings.backend == "aws" else None
    worker = Worker(
        backend, settings, JobRunner(), stop,
        price_per_hour=price_per_hour(settings.price_per_hour, imds, ec2),
        on_idle_exit=guard.leave if guard else None,
        protect=guard.protect if guard else None,
    )
    return worker, guard


def _aws_client(service: str, settings: WorkerSettings) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(service, region_name=settings.region, config=Config(retries={"mode": "standard"}))


def _scale_in_guard(settings: WorkerSettings, imds: Imds | None) -> ScaleInGuard | None:
    if not settings.asg_name or imds is None:
        return None
    instance_id = imds.get("instance-id")
    if not instance_id:
        return None
    holders_dir = settings.resolved_cache_dir / "scale-in-holders"  # shared by this instance's worker processes
    return ScaleInGuard(_aws_client("autoscaling", settings), settings.asg_name, instance_id, holders_dir)


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
    set_pixel_limit(settings.max_image_pixels)
    document = _handled(lambda: run_predict(lambda: open_backend(settings), model, job, classes_from, list(images), top))
    print(json.dumps(document, indent=2))


Result = TypeVar("Result")


def _handled(action: Callable[[], Result]) -> Result:
    """`action()`, with spotsweep's errors as one line on stderr and exit 2 (bad input) or 1."""
    try:
        return action()
    except BadInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except SpotsweepError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


# --- weights ---------------------------------------------------------------------------------

DOWNLOAD_TIMEOUT_S = 30  # per socket operation: an offline machine answers fast, a filtered one never


@weights_app.command("imagenet")
def weights_imagenet(
    architecture: str = typer.Argument(..., help="A keras.applications architecture, e.g. mobilenet_v2."),
    image_size: int = typer.Option(224, "--image-size", help="The image side the study uses."),
) -> None:
    """Fetch ARCHITECTURE's ImageNet weights (exit 1, one line, when they cannot be downloaded).

    They land in Keras's cache (~/.keras/models), where this machine's jobs find them.
    """
    import socket

    spec = _base_spec(architecture, image_size, "imagenet")
    from worker.training.models import architecture as arch_of, build_base  # TensorFlow loads here

    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # Keras's download sets no timeout of its own
    try:
        _handled(lambda: build_base(arch_of(spec.architecture), spec, None))
    finally:
        socket.setdefaulttimeout(before)
    typer.echo(f"imagenet weights for {architecture} at {image_size} px are available")


@weights_app.command("calibrate")
def weights_calibrate(
    architecture: str = typer.Argument(..., help="A keras.applications architecture, e.g. mobilenet_v2."),
    dataset: str = typer.Argument(..., help="A prepared dataset: a local directory or its location in the artifact store."),
    to: str = typer.Option(..., "--to", help="Where to put the .weights.h5 file in the artifact store (a key or location)."),
    image_size: int = typer.Option(224, "--image-size", help="The image side the study uses."),
    images: int = typer.Option(256, "--images", min=2, max=4096, help="Training images to take the statistics from (no labels)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the random init and the choice of images."),
    backend: Optional[str] = typer.Option(None, "--backend", help="local or aws (default: SPOTSWEEP_BACKEND)."),
) -> None:
    """Put weights a frozen base learns from, with no download, in the artifact store.

    A seeded random init whose BatchNormalization statistics are those of the dataset's training
    images (no labels): above chance, far below ImageNet's. For machines that cannot
    download ImageNet weights; a study names the file in "weights".
    """
    _base_spec(architecture, image_size, None)
    settings = _settings(**({"backend": backend} if backend else {}))
    set_pixel_limit(settings.max_image_pixels)
    location = _handled(lambda: _calibrate(settings, architecture, dataset, to, image_size, images, seed))
    typer.echo(f"calibrated {architecture} weights ({image_size} px) in {location}")


def _base_spec(architecture: str, image_size: int, weights: str | None) -> ModelSpec:
    """The ModelSpec of a base, checked before TensorFlow loads: exit 2 for a bad name or size."""
    arch = ARCHITECTURES.get(architecture)
    reason = "the benchmark CNN has no pretrained base" if arch and arch.is_benchmark else None
    reason = reason or (arch.size_error(image_size, weights) if arch else f"unknown architecture {architecture!r}")
    if reason:
        typer.echo(f"error: ARCHITECTURE: {reason}", err=True)
        raise typer.Exit(2)
    return ModelSpec(architecture=architecture, weights=weights, image_size=image_size)


def _calibrate(settings: WorkerSettings, arch: str, dataset: str, to: str, image_size: int, images: int, seed: int) -> str:
    """Calibrate on `dataset`, put the file at `to` in the artifact store; its display location."""
    import tempfile

    from shared.datasets import resolve_dataset
    from worker.training.calibrate import write_calibrated_weights  # TensorFlow loads here

    artifacts = open_backend(settings).artifacts
    key = artifacts.key_for(to)
    if not key.endswith(".weights.h5"):
        raise BadInputError(f"{to!r}: a weights file's name must end in .weights.h5 (Keras picks its loader by name)", "--to")
    cache_dir = settings.resolved_cache_dir
    dataset_dir = resolve_dataset(dataset, artifacts, cache_dir / "datasets")
    with tempfile.TemporaryDirectory() as scratch:
        path = write_calibrated_weights(
            dataset_dir, arch, image_size, Path(scratch) / "base.weights.h5", cache_dir / "images", seed, images
        )
        artifacts.put_file(path, key)
    return artifacts.uri(key)
