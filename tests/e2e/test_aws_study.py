"""The same study on the AWS backend, against moto's server over real HTTP: `submit init`,
`submit dataset upload`, `submit study`, two `worker run --until-empty` processes, `leaderboard`."""

from __future__ import annotations

import boto3
import pytest

from shared.backends.aws import open_aws
from shared.status import JobStatus
from tests.aws_support import REGION, aws_config, aws_subprocess_env, unique_stack
from tests.e2e.conftest import env_for, start_workers, submit, submit_json, wait_all
from tests.e2e.test_local_study import write_study

pytestmark = [pytest.mark.slow, pytest.mark.aws]


def test_study_on_aws(tmp_path, tiny_dataset, moto_endpoint, monkeypatch):
    stack = unique_stack("e2e")
    env = {**env_for(tmp_path / "home"), **aws_subprocess_env(moto_endpoint, {}), "SPOTSWEEP_BACKEND": "aws",
           "SPOTSWEEP_STACK": stack, "SPOTSWEEP_REGION": REGION}
    env = {k: v for k, v in env.items() if not (k.startswith("AWS_") and k not in aws_subprocess_env(moto_endpoint, {}))}
    assert "created" in submit(env, "init").stdout
    assert "exists" in submit(env, "init").stdout or "found" in submit(env, "init").stdout  # idempotent
    bucket = f"{stack}-artifacts"
    submit(env, "dataset", "upload", str(tiny_dataset), f"s3://{bucket}/datasets/tiny")
    study_file = write_study(tmp_path / "sweep.json", "placeholder")
    study_file.write_text(study_file.read_text().replace('"placeholder"', f'"s3://{bucket}/datasets/tiny"'))
    assert submit_json(env, "study", str(study_file))["created"] == 6

    codes = wait_all(start_workers(env, 2, "--until-empty", log_dir=tmp_path / "logs"), timeout_s=900)
    assert codes == [0, 0], [p.read_text()[-3000:] for p in (tmp_path / "logs").iterdir()]

    rows = submit_json(env, "leaderboard")["rows"]
    assert len(rows) == 6 and {r["status"] for r in rows} == {"SUCCEEDED"}
    for name, value in aws_subprocess_env(moto_endpoint, {}).items():
        monkeypatch.setenv(name, value)
    backend = open_aws(aws_config(stack), boto3.Session(region_name=REGION))
    keys = {info.key for info in backend.artifacts.list("studies/")}
    for row in rows:
        assert row["checkpoint"] in keys and row["checkpoint"].startswith("studies/")  # records hold keys
        assert row["checkpoint_uri"] == f"s3://{bucket}/{row['checkpoint']}"  # and where a person finds them
        record = backend.store.find_job(row["job_id"])
        assert record.status == JobStatus.SUCCEEDED and record.metrics.val_accuracy is not None
        assert record.epochs_run >= 1 and len(backend.store.epochs(record.study_id, record.job_id)) == record.epochs_run
    counts = backend.queue.counts()
    assert (counts.visible, counts.in_flight, counts.dead) == (0, 0, 0)
