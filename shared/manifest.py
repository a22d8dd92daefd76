"""A prepared dataset's manifest: every file with its size, checksum, class and split.

Layout of a prepared dataset (a local directory or a prefix in the artifact store):

    manifest.json
    train/<class>/<file>
    test/<class>/<file>      the held-out test split, touched only by `evaluate` jobs

The validation split is drawn from train/ at training time, seeded per study.
`checksum` identifies the dataset's content (the feature cache keys on it).

A manifest may come from someone else's bucket: every path is a safe key and every class name a
safe folder name (`shared.paths.check_class_name`), checked by the models themselves, so wherever
a manifest is parsed (prepare, upload, sync, a worker's load) the same rule holds. The checks raise
`BadInputError`, which pydantic lets through unwrapped: callers name the manifest in the message.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.paths import check_class_name, check_key

MANIFEST_NAME = "manifest.json"
Split = Literal["train", "test"]


class ManifestFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str  # relative POSIX path inside the dataset, e.g. "train/daisy/0001.png"
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    split: Split
    label: str  # the class name

    @field_validator("path")
    @classmethod
    def _safe(cls, path: str) -> str:
        return check_key(path)

    @field_validator("label")
    @classmethod
    def _safe_label(cls, label: str) -> str:
        return check_class_name(label)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    name: str
    classes: list[str] = Field(min_length=1)  # sorted; the index is the label id
    files: list[ManifestFile]
    seed: int = 0
    test_fraction: float = 0.2

    @field_validator("classes")
    @classmethod
    def _safe_classes(cls, classes: list[str]) -> list[str]:
        for name in classes:
            check_class_name(name)
        return classes

    @property
    def checksum(self) -> str:
        """Content identity: changes whenever any file, class or split changes."""
        rows = sorted((f.path, f.sha256, f.split, f.label) for f in self.files)
        return hashlib.sha256(json.dumps([self.classes, rows]).encode()).hexdigest()

    def split(self, split: Split) -> list[ManifestFile]:
        """The files of one split, in path order (deterministic)."""
        return sorted((f for f in self.files if f.split == split), key=lambda f: f.path)

    def label_index(self, label: str) -> int:
        return self.classes.index(label)

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)
