"""What a job reads from the artifact store besides its own state: a weights file, the parent's model."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import keras

from shared.errors import BadInputError, PermanentError
from shared.ports import ArtifactStore
from worker.job import JobContext
from worker.training.models import load_model


def weights_key(artifacts: ArtifactStore, weights: str) -> str:
    """The artifact key of the spec's weights file, by the store's one parser: a key,
    `artifacts:<key>` or `s3://bucket/<root>/<key>` (the store's root is not repeated)."""
    try:
        return artifacts.key_for(weights)
    except BadInputError as exc:
        raise PermanentError(f"weights: {exc}") from None


def fetch_weights(ctx: JobContext) -> Path | None:
    """The local copy of the spec's weights file; None for "imagenet" and random init."""
    weights = ctx.spec.model.weights
    if weights is None or weights == "imagenet":
        return None
    key = weights_key(ctx.artifacts, weights)
    if not ctx.artifacts.exists(key):
        raise PermanentError(f"weights file {weights!r} does not exist in the artifact store")
    local = Path(ctx.work_dir) / "weights" / PurePosixPath(key).name
    if not local.name.endswith(".weights.h5"):  # Keras picks the loader by suffix
        local = local.with_name(local.name + ".weights.h5")
    ctx.artifacts.get_file(key, local)
    return local


def parent_checkpoint_key(ctx: JobContext) -> str:
    """The parent's model as its record names it (`checkpoint`, written with its metrics by the
    parent's fenced finish): never a fixed key, which a fenced-out worker could have written."""
    if ctx.spec.parent_job_id is None:
        raise PermanentError(f"{ctx.spec.kind} job {ctx.job_id} names no parent job")
    if not ctx.parent_checkpoint:
        raise PermanentError(f"the parent job {ctx.spec.parent_job_id} has no checkpoint (it has not succeeded)")
    return ctx.parent_checkpoint


def load_parent(ctx: JobContext) -> keras.Model:
    """The parent job's best model, loaded in safe mode."""
    key = parent_checkpoint_key(ctx)
    if not ctx.artifacts.exists(key):
        raise PermanentError(f"the parent's checkpoint {key} does not exist")
    local = Path(ctx.work_dir) / "parent-best.keras"
    ctx.artifacts.get_file(key, local)
    try:
        return load_model(local)
    except Exception as exc:  # not a loadable .keras file (or one that needs unsafe code)
        raise PermanentError(f"cannot load the parent's checkpoint {key}: {exc}") from exc
