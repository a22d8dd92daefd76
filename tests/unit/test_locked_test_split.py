"""The test split stays locked (issue 17): only evaluation jobs open it.

The proof does not trust the loader's own check. It runs real train and finetune jobs on a copy
of a prepared dataset in which every test-split image was replaced by a directory of the same
name: any open of one (Python's `open`, Pillow, TensorFlow's `read_file`, numpy) fails, and a
file check (`is_file`) says it is missing, so a job that opened or even looked for a test file
would fail. They succeed; an evaluation on the same copy fails on the first test file, which
shows the trap springs; on the intact dataset the evaluation reads the split and succeeds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shared.backends.local import LocalArtifactStore
from shared.errors import PermanentError
from tests.training_support import context, tiny_spec
from worker.training import data, run_job

pytestmark = pytest.mark.xdist_group("locked_test_split")


def trapped_copy(dataset: Path, target: Path) -> list[Path]:
    """Copy `dataset` to `target` with every test-split file replaced by an empty directory;
    the trapped paths."""
    shutil.copytree(dataset, target, ignore=shutil.ignore_patterns(".cache"))
    trapped = []
    for entry in data.load_manifest(target).split("test"):
        path = target / entry.path
        path.unlink()
        path.mkdir()  # open() -> IsADirectoryError; is_file() -> False
        trapped.append(path)
    return trapped


@pytest.mark.parametrize("kind", ["train", "finetune"])
def test_the_loader_refuses_the_test_split_to_train_and_finetune_jobs(tiny_dataset, tmp_path, kind):
    manifest = data.load_manifest(tiny_dataset)
    with pytest.raises(PermanentError, match=f"a {kind} job may not read the test split: the test split stays locked"):
        data.split_files(manifest, "test", kind)
    with pytest.raises(PermanentError, match="only evaluation jobs open it"):
        data.load_images(tiny_dataset, manifest, "test", 32, tmp_path / "cache", reader=kind)
    with pytest.raises(PermanentError, match="a train job may not"):  # asking without saying who: least privilege
        data.load_images(tiny_dataset, manifest, "test", 32, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # refused before anything was opened or written
    assert len(data.split_files(manifest, "test", "evaluate").paths) == len(manifest.split("test"))
    assert len(data.split_files(manifest, "train", kind).paths) == len(manifest.split("train"))


def test_train_and_finetune_jobs_never_open_a_test_file(tiny_dataset, tmp_path):
    copy = tmp_path / "trapped"
    trapped = trapped_copy(tiny_dataset, copy)
    assert trapped and all(path.is_dir() for path in trapped)
    store = LocalArtifactStore(tmp_path / "artifacts")

    def run(job_id: str, spec, dataset: Path, **fields):
        return run_job(context(tmp_path, spec, dataset, job_id=job_id, artifacts=store, **fields))

    cnn = run("cnn", tiny_spec(training={"epochs": 2}), copy)
    head_spec = tiny_spec("mobilenet", model={"head": {"units": 16}}, training={"epochs": 2})
    head = run("head", head_spec, copy)  # builds the feature cache from the train split
    tuned = run("tuned", tiny_spec("mobilenet", kind="finetune", parent_job_id="head", model={"head": {"units": 16}},
                                   training={"epochs": 1}), copy, parent_checkpoint=head.checkpoint)
    cnn_tuned = run("cnn-tuned", tiny_spec(kind="finetune", parent_job_id="cnn", training={"epochs": 1}),
                    copy, parent_checkpoint=cnn.checkpoint)
    for result in (cnn, head, tuned, cnn_tuned):
        assert result.outcome == "completed" and result.checkpoint and "val_correct" in result.artifacts
    assert all(path.is_dir() and not any(path.iterdir()) for path in trapped)  # untouched, nothing written there

    # the trap springs on a job that does read the split ...
    evaluate = tiny_spec("mobilenet", kind="evaluate", parent_job_id="tuned", model={"head": {"units": 16}})
    with pytest.raises(PermanentError, match=r"missing \d+ files, e\.g\. .*/test/"):
        run("ev-trapped", evaluate, copy, parent_checkpoint=tuned.checkpoint)
    # ... and on the intact dataset, evaluation reads every test image
    evaluated = run("ev", evaluate, tiny_dataset, parent_checkpoint=tuned.checkpoint)
    assert evaluated.outcome == "completed"
    assert evaluated.metrics["test_examples"] == len(trapped)
