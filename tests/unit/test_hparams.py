"""The study's HParams dashboard: every job's tensorboard folder is a session with its
hyperparameters and final metrics, read back as TensorBoard reads them (real event files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from shared.backends.local import LocalArtifactStore
from tests.training_support import context, tiny_dataset, tiny_spec  # noqa: F401
from worker.training import run_job
from worker.training.logs import EpochLogs, job_hparams

pytestmark = pytest.mark.timeout(600)


def _session(run_dir: Path) -> tuple[plugin_data_pb2.SessionStartInfo, dict[str, float]]:
    """A session run's start info and the last value of each of its scalars."""
    accumulator = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    content = accumulator.PluginTagToContent(hp_metadata.PLUGIN_NAME)[hp_metadata.SESSION_START_INFO_TAG]
    start = hp_metadata.parse_session_start_info_plugin_data(content)
    last = {tag: float(tensor_util.make_ndarray(accumulator.Tensors(tag)[-1].tensor_proto))
            for tag in accumulator.Tags()["tensors"] if tag != hp_metadata.SESSION_START_INFO_TAG}
    return start, last


def _values(start: plugin_data_pb2.SessionStartInfo) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        out[name] = {"string_value": value.string_value, "bool_value": value.bool_value}.get(kind, value.number_value)
    return out


def test_a_trained_job_is_a_session_with_its_hparams_and_final_metrics(tmp_path, tiny_dataset):
    spec = tiny_spec(optimizer={"name": "sgd", "learning_rate": 0.05, "momentum": 0.9},
                     training={"epochs": 2, "batch_size": 6, "data_fraction": 0.5})
    ctx = context(tmp_path, spec, tiny_dataset, job_id="job-hp")
    result = run_job(ctx)
    local_root = tmp_path / "artifacts" / result.artifacts["tensorboard"]

    start, last = _session(local_root)

    assert start.group_name == "job-hp"
    values = _values(start)
    assert values == job_hparams(spec)
    assert (values["architecture"], values["optimizer"], values["optimizer.momentum"]) == ("benchmark", "sgd", 0.9)
    assert (values["batch_size"], values["data_fraction"], values["image_size"], values["epochs"]) == (6, 0.5, 32, 2)
    assert last["best/val_accuracy"] == pytest.approx(result.metrics["val_accuracy"])
    assert last["best/val_loss"] == pytest.approx(result.metrics["val_loss"])
    assert (last["best/epoch"], last["epochs_run"]) == (result.best_epoch, 2)


def _history(val_accuracy: list[float]) -> list[dict[str, float]]:
    return [{"epoch": i + 1, "loss": 1.0 - a, "accuracy": a, "val_loss": 2.0 - a, "val_accuracy": a, "seconds": 0.5}
            for i, a in enumerate(val_accuracy)]


def _write_job(store: LocalArtifactStore, tmp: Path, job_id: str, optimizer: dict, accuracies: list[float]) -> None:
    logs = EpochLogs(store, f"studies/s1/jobs/{job_id}", tmp / "work" / job_id,
                     tiny_spec(optimizer=optimizer), trial_id=job_id)
    try:
        for epoch in range(1, len(accuracies) + 1):
            logs.write_epoch(_history(accuracies[:epoch]))
    finally:
        logs.close()


def test_the_study_folder_shows_every_job_with_the_union_of_columns(tmp_path):
    """What `tensorboard --logdir .../studies/s1/jobs` builds: no job writes the experiment
    summary, so TensorBoard takes the columns from all sessions (an SGD job has no beta_1)."""
    from tensorboard import context as tb_context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    store = LocalArtifactStore(tmp_path / "artifacts")
    _write_job(store, tmp_path, "a", {"name": "sgd", "momentum": 0.9}, [0.5, 0.8, 0.7])
    _write_job(store, tmp_path, "b", {"name": "adam", "beta_1": 0.8}, [0.6])
    logdir = str(tmp_path / "artifacts" / "studies" / "s1" / "jobs")
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
    tb = base_plugin.TBContext(logdir=logdir, data_provider=provider, multiplexer=multiplexer)
    backend = backend_context.Context(tb)
    request = tb_context.RequestContext()
    experiment = backend.experiment_from_metadata(
        request, "", True, backend.hparams_metadata(request, ""), backend.hparams_from_data_provider(request, "", None)
    )

    columns = {info.name: info for info in experiment.hparam_infos}
    assert {"optimizer.momentum", "optimizer.beta_1", "architecture", "batch_size"} <= set(columns)
    assert set(columns["optimizer"].domain_discrete) == {"sgd", "adam"}
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    assert {("", "best/val_accuracy"), ("", "best/val_loss"), ("", "epochs_run")} <= metrics
    _, last = _session(Path(logdir) / "a" / "tensorboard")
    assert (last["best/val_accuracy"], last["best/epoch"], last["epochs_run"]) == (pytest.approx(0.8), 2, 3)
