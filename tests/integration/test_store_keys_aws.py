"""Store keys on a PREFIXED S3 store (moto's server over HTTP): records hold keys relative to the
store's root, and export, predict, report, dataset sync and weights read them without repeating
the root; `submit study` refuses what the store cannot give; `submit init` makes a versioned,
TLS-only bucket. The embedded backend's side: `test_store_keys.py`."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from shared.backends.aws import provision
from shared.backends.aws_s3 import S3ArtifactStore
from shared.datasets import load_manifest, resolve_dataset, upload
from shared.errors import BadInputError
from shared.paths import job_prefix
from shared.ports import Backend
from shared.status import JobStatus
from submitter import service
from submitter.report import build_report, export_model
from tests.aws_support import REGION, aws_config, delete_resources, endpoint_for, fresh_aws_backend, unique_stack, use_moto_env
from tests.integration.test_report import build_study, curve, run_through_store, study_spec
from worker import predict

pytestmark = pytest.mark.aws

ROOT = "team-a"


@pytest.fixture
def aws(request) -> Backend:
    yield from fresh_aws_backend(request, lease_s=30.0, max_receives=3)


@pytest.fixture
def prefixed(aws: Backend) -> Backend:
    """The AWS backend with its artifact store rooted at `team-a/` in the bucket."""
    account = boto3.client("sts").get_caller_identity()["Account"]
    store = S3ArtifactStore(aws.artifacts.client, aws.artifacts.bucket, prefix=ROOT, expected_owner=account)
    return Backend(queue=aws.queue, store=aws.store, artifacts=store, name="aws")


def raw_keys(backend: Backend) -> set[str]:
    """Every object key in the bucket, as S3 itself lists them (the root included)."""
    client, bucket = backend.artifacts.client, backend.artifacts.bucket
    return {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])}


def dataset_location(backend: Backend, tiny_dataset: Path) -> str:
    upload(tiny_dataset, backend.artifacts, "datasets/tiny")
    return f"s3://{backend.artifacts.bucket}/{ROOT}/datasets/tiny"


def test_export_predict_and_report_read_keys_of_a_prefixed_store(prefixed, tiny_dataset, tmp_path):
    backend, study_id = build_study(prefixed, dataset_location(prefixed, tiny_dataset))
    records = backend.store.list_jobs(study_id)
    best = max((r for r in records if r.kind == "train" and r.checkpoint), key=lambda r: r.metrics.val_accuracy)
    key = f"{job_prefix(study_id, best.job_id)}/best.keras"
    assert best.checkpoint == key  # relative to the store's root: the root is never in a record
    assert f"{ROOT}/{key}" in raw_keys(backend) and not any(k.startswith(f"{ROOT}/{ROOT}/") for k in raw_keys(backend))
    classes = load_manifest(tiny_dataset).classes

    exported = export_model(backend, best.job_id, tmp_path / "model.keras")
    assert exported.path.read_bytes() == backend.artifacts.get_bytes(key)
    assert exported.classes == classes  # from the manifest under the prefixed s3:// dataset location

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    source = predict.job_source(backend, best.job_id, scratch)
    assert source.model.read_bytes() == exported.path.read_bytes() and source.classes == classes

    report = build_report(backend, study_id, tmp_path / "report")
    assert {"confusion_matrix.png", "per_class_accuracy.png"} <= {p.name for p in report.files}
    assert report.data["per_class_accuracy"] == {"daisy": 0.75, "rose": 1.0, "tulip": 0.75}

    uris = service.artifact_uris(next(r for r in records if r.kind == "evaluate"), backend.artifacts)
    assert uris["checkpoint_uri"] == f"s3://{backend.artifacts.bucket}/{ROOT}/{key}"
    assert all(uri.startswith(f"s3://{backend.artifacts.bucket}/{ROOT}/studies/") for uri in uris["artifact_uris"].values())


def test_a_record_naming_a_local_file_is_refused_on_s3_too(prefixed, tiny_dataset, tmp_path):
    backend, study_id = build_study(prefixed, dataset_location(prefixed, tiny_dataset), evaluate=False, leave_queued=1)
    secret = tmp_path / "secret.keras"
    secret.write_bytes(b"the laptop's secret")
    queued = backend.store.list_jobs(study_id, JobStatus.QUEUED)[0]
    run_through_store(backend, queued, curve(queued, 4), checkpoint=str(secret))  # a teammate's record
    with pytest.raises(BadInputError, match="not in the artifact store"):
        export_model(backend, queued.job_id, tmp_path / "out.keras")
    with pytest.raises(BadInputError, match="not in the artifact store"):
        predict.job_source(backend, queued.job_id, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.keras"]
    key = next(r for r in backend.store.list_jobs(study_id) if r.checkpoint and r.job_id != queued.job_id).checkpoint
    for location in (f"s3://another-bucket/{ROOT}/{key}", f"s3://{backend.artifacts.bucket}/{key}"):  # last: outside the root
        with pytest.raises(BadInputError):
            backend.artifacts.key_for(location)


def test_dataset_sync_and_weights_use_the_stores_parser(prefixed, tiny_dataset, tmp_path):
    from worker.training.inputs import weights_key  # keras: imported here only

    location = dataset_location(prefixed, tiny_dataset)
    synced = resolve_dataset(location, prefixed.artifacts, tmp_path / "cache")
    assert load_manifest(synced) == load_manifest(tiny_dataset)
    assert resolve_dataset("artifacts:datasets/tiny/", prefixed.artifacts, tmp_path / "cache") == synced
    with pytest.raises(BadInputError, match="outside the artifact store's root"):
        resolve_dataset(f"s3://{prefixed.artifacts.bucket}/datasets/tiny", prefixed.artifacts, tmp_path / "cache")
    bucket = prefixed.artifacts.bucket
    assert weights_key(prefixed.artifacts, f"s3://{bucket}/{ROOT}/weights/w.weights.h5") == "weights/w.weights.h5"
    assert weights_key(prefixed.artifacts, "weights/w.weights.h5") == "weights/w.weights.h5"  # never team-a/team-a/...


@pytest.mark.parametrize(
    ("dataset", "weights", "path", "message"),
    [
        ("local", None, "dataset", "local directory"),
        ("s3", "s3://another-bucket/team-a/weights/w.weights.h5", "parameters.weights[0]", "is not the artifact store's bucket"),
        ("s3", "s3://{bucket}/weights/w.weights.h5", "parameters.weights[0]", "outside the artifact store's root"),
        ("s3", "s3://{bucket}/team-a/weights/absent.weights.h5", "parameters.weights[0]", "no weights file"),
        ("s3://{bucket}/team-a/datasets/never-uploaded", None, "dataset", "no uploaded dataset"),
        ("s3://another-bucket/datasets/tiny", None, "dataset", "is not the artifact store's bucket"),
    ],
)
def test_submit_refuses_what_the_store_cannot_give_and_writes_nothing(
    prefixed, tiny_dataset, dataset, weights, path, message
):
    bucket = prefixed.artifacts.bucket
    prefixed.artifacts.put_bytes("weights/w.weights.h5", b"weights")
    location = {"local": str(tiny_dataset), "s3": None}.get(dataset, dataset.format(bucket=bucket))
    location = location or dataset_location(prefixed, tiny_dataset)
    spec = study_spec(location).model_copy(deep=True)
    if weights is not None:
        spec = spec.model_copy(update={"parameters": spec.parameters.model_copy(update={"weights": [weights.format(bucket=bucket)]})})
    with pytest.raises(BadInputError) as caught:
        service.submit_study(prefixed, spec)
    assert caught.value.path == path and message in str(caught.value)
    assert prefixed.store.list_studies() == [] and prefixed.queue.counts().backlog == 0


def test_submit_accepts_weights_and_a_dataset_under_the_root(prefixed, tiny_dataset):
    bucket = prefixed.artifacts.bucket
    prefixed.artifacts.put_bytes("weights/w.weights.h5", b"weights")
    spec = study_spec(dataset_location(prefixed, tiny_dataset))
    spec = spec.model_copy(update={"parameters": spec.parameters.model_copy(
        update={"weights": [f"s3://{bucket}/{ROOT}/weights/w.weights.h5", "weights/w.weights.h5"]})})
    report = service.submit_study(prefixed, spec)
    assert report.created == len(prefixed.store.list_jobs(spec.study_id)) > 0  # both forms name the one file


# --- submit init: the bucket as Terraform makes it ---


@pytest.fixture
def session(request):
    use_moto_env(request, endpoint_for(request))
    return boto3.Session(region_name=REGION)


def test_init_makes_a_versioned_tls_only_bucket(session):
    config = aws_config(unique_stack())
    try:
        lines = provision(config, session)
        assert lines[-1].startswith("created S3 bucket") and "versioned, TLS only" in lines[-1]
        s3, bucket = session.client("s3"), config.resolved_bucket
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        statement = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"][0]
        assert statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert set(statement["Resource"]) == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        assert {r["NoncurrentVersionExpiration"]["NoncurrentDays"] for r in rules} == {30, 7}
        assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
        assert provision(config, session)[-1] == f"found S3 bucket {bucket}"  # and left as it is
    finally:
        delete_resources(config, session)


def test_init_warns_about_an_existing_unversioned_bucket(session):
    config = aws_config(unique_stack())
    s3 = session.client("s3")
    s3.create_bucket(Bucket=config.resolved_bucket)  # made by hand, before `submit init`
    try:
        line = provision(config, session)[-1]
        assert line.startswith(f"found S3 bucket {config.resolved_bucket}") and "versioning is off" in line
        with pytest.raises(ClientError, match="NoSuchBucketPolicy"):  # nothing of it was changed
            s3.get_bucket_policy(Bucket=config.resolved_bucket)
    finally:
        delete_resources(config, session)
