"""Datasets: draw a synthetic one, prepare a folder of class-named image folders into a
train/test split with a manifest, upload it to the artifact store, and sync it into a worker's
local cache; check an image from its header before anything decodes it. Pure functions over paths and an `ArtifactStore`; the CLIs are thin wrappers.
Only numpy and pillow (no TensorFlow): `shared/` stays light.
"""

from shared.datasets.images import DEFAULT_MAX_PIXELS, check_image, set_pixel_limit
from shared.datasets.prepare import IMAGE_EXTENSIONS, check_contained, find_problems, load_manifest, prepare, verify
from shared.datasets.sync import (
    SyncReport,
    UploadReport,
    clean_prefix,
    fetch_manifest,
    resolve_dataset,
    store_prefix,
    sync,
    upload,
)
from shared.datasets.synth import flower_types, synthesize

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "SyncReport",
    "UploadReport",
    "check_contained",
    "check_image",
    "clean_prefix",
    "fetch_manifest",
    "find_problems",
    "flower_types",
    "load_manifest",
    "prepare",
    "resolve_dataset",
    "set_pixel_limit",
    "store_prefix",
    "sync",
    "synthesize",
    "upload",
    "verify",
]
