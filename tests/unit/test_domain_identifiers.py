"""Identifiers from outside: class names in a manifest, weights locations, study and job ids."""

from __future__ import annotations

import json

import pytest

from shared.datasets.prepare import parse_manifest
from shared.errors import BadInputError
from shared.manifest import Manifest
from shared.paths import check_class_name, check_id, check_location

SHA = "0" * 64


def manifest_json(classes: list[str], label: str | None = None) -> str:
    label = classes[0] if label is None else label
    files = [{"path": "train/daisy/1.png", "size": 1, "sha256": SHA, "split": "train", "label": label}]
    return json.dumps({"name": "flowers", "classes": classes, "files": files})


@pytest.mark.parametrize("name", ["daisy", "Daisy Bell", "rose-2", "café", "a" * 255, ".hidden", "a.b"])
def test_class_names_that_are_one_folder_name_are_accepted(name):
    assert check_class_name(name) == name
    assert Manifest.model_validate_json(manifest_json([name])).classes == [name]
    classes = sorted({"daisy", name})
    assert parse_manifest(manifest_json(classes, label="daisy"), "manifest.json").classes == classes


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "../up", "a\\b", "a\x00b", "bold\x1b[1m", "new\nline", "tab\t", "a" * 256, "del\x7f"]
)
def test_class_names_that_are_not_one_folder_name_are_refused_wherever_a_manifest_is_parsed(name):
    with pytest.raises(BadInputError):
        check_class_name(name)
    with pytest.raises(BadInputError, match="invalid class name"):
        parse_manifest(manifest_json(["daisy", name], label="daisy"), "s3://team/data/manifest.json")
    with pytest.raises(BadInputError, match="invalid class name"):  # a file's label, too
        Manifest.model_validate_json(manifest_json(["daisy"], label=name))


@pytest.mark.parametrize("location", ["imagenet", "w/mobilenet.weights.h5", "artifacts:w/x.weights.h5", "s3://team/w/x.h5"])
def test_locations_inside_a_store_are_accepted(location):
    assert check_location(location) == location


@pytest.mark.parametrize(
    "location",
    ["../x", "w/../../x", "/etc/passwd", "artifacts:../x", "artifacts:/x", "s3://b/../x", "file:///etc/passwd", "C:\\x", ""],
)
def test_locations_that_escape_a_store_are_refused(location):
    with pytest.raises(BadInputError, match="unsafe"):
        check_location(location, "weights")


def test_generated_ids_pass_the_id_check():
    from shared.jobs import job_id_for
    from tests.factories import job_spec

    assert check_id(job_id_for("flowers-1a2b3c4d", job_spec())) and check_id("flowers-1a2b3c4d")
