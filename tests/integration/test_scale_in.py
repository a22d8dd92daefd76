"""Scale-in safety against moto's autoscaling API over HTTP (moto's server, real boto3 requests):
`ScaleInGuard` protects the instance while a job runs and an idle worker leaves its group with
the desired capacity decremented, so that the autoscaler starts no replacement."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from shared.submission import submit_jobs
from tests.aws_support import REGION, moto_endpoint  # noqa: F401  (the session fixture)
from worker.asg import ScaleInGuard
from worker.loop import Policy, Worker
from worker.settings import WorkerSettings
from worker.job import JobResult

pytestmark = pytest.mark.aws

STUDY = "scale-in-1"


def client(service: str, endpoint: str) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def group(moto_endpoint: str) -> dict[str, Any]:  # noqa: F811
    """An autoscaling group (launch template, one zone) with exactly one instance in service."""
    ec2, autoscaling = client("ec2", moto_endpoint), client("autoscaling", moto_endpoint)
    name = f"spotsweep-{uuid.uuid4().hex[:10]}"
    ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g4dn.xlarge"})
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateName": name, "Version": "$Latest"},
        MinSize=0, MaxSize=3, DesiredCapacity=1, AvailabilityZones=[f"{REGION}a"],
    )
    instances = describe(autoscaling, name)["Instances"]
    assert len(instances) == 1, instances
    yield {"name": name, "instance_id": instances[0]["InstanceId"], "autoscaling": autoscaling}
    try:
        autoscaling.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
        ec2.delete_launch_template(LaunchTemplateName=name)
    except Exception:  # noqa: BLE001  best effort
        pass


def describe(autoscaling: Any, name: str) -> dict[str, Any]:
    return autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]


def protected(autoscaling: Any, name: str, instance_id: str) -> bool:
    instance = next(i for i in describe(autoscaling, name)["Instances"] if i["InstanceId"] == instance_id)
    return instance["ProtectedFromScaleIn"]


def member_ids(autoscaling: Any, name: str) -> list[str]:
    return [i["InstanceId"] for i in describe(autoscaling, name)["Instances"]]


def test_protect_unprotect_and_leave(group):
    autoscaling, name, instance_id = group["autoscaling"], group["name"], group["instance_id"]
    guard = ScaleInGuard(autoscaling, name, instance_id)
    assert protected(autoscaling, name, instance_id) is False

    guard.protect(True)
    assert protected(autoscaling, name, instance_id) is True
    guard.protect(True)  # idempotent (and no second API call needed)
    assert protected(autoscaling, name, instance_id) is True
    guard.protect(False)
    assert protected(autoscaling, name, instance_id) is False

    guard.protect(True)
    guard.leave()  # drops the protection first, then leaves with the desired capacity decremented
    state = describe(autoscaling, name)
    assert instance_id not in member_ids(autoscaling, name)
    assert state["DesiredCapacity"] == 0 and state["Instances"] == [], state


def settings_for(home: Path) -> WorkerSettings:
    return WorkerSettings(home=home, lease_s=3.0, max_receives=3, poll_wait_s=0.1, retry_backoff_s=0.0)


def test_idle_worker_leaves_its_group(group, local_backend, tmp_path):
    autoscaling, name, instance_id = group["autoscaling"], group["name"], group["instance_id"]
    guard = ScaleInGuard(autoscaling, name, instance_id)
    assert local_backend.queue.counts().backlog == 0

    def never_called(ctx: Any) -> JobResult:
        raise AssertionError("the queue is empty")

    worker = Worker(local_backend, settings_for(tmp_path / "home"), never_called, on_idle_exit=guard.leave, protect=guard.protect)
    started = time.monotonic()
    assert worker.work(Policy(idle_timeout_s=0.5)) == 0
    assert time.monotonic() - started < 30
    state = describe(autoscaling, name)
    assert instance_id not in member_ids(autoscaling, name)
    assert state["DesiredCapacity"] == 0, state


def test_instance_is_protected_while_a_job_runs(group, local_backend, tiny_dataset, tmp_path):
    from shared.jobs import JobSpec, ModelSpec, TrainingSpec, job_id_for

    autoscaling, name, instance_id = group["autoscaling"], group["name"], group["instance_id"]
    guard = ScaleInGuard(autoscaling, name, instance_id)
    spec = JobSpec(dataset=str(tiny_dataset), model=ModelSpec(architecture="benchmark", image_size=32),
                   optimizer={"name": "adam"}, training=TrainingSpec(epochs=1))
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id_for(STUDY, spec), spec)])
    seen: list[bool] = []

    def training(ctx: Any) -> JobResult:
        seen.append(protected(autoscaling, name, instance_id))
        return JobResult("completed", None, 1, 1, {"val_accuracy": 0.5, "val_loss": 1.0}, 0.01, 10, 10, None, {})

    worker = Worker(local_backend, settings_for(tmp_path / "home"), training, on_idle_exit=guard.leave, protect=guard.protect)
    worker.work(Policy(until_empty=True))
    assert seen == [True]  # protected during the job
    assert instance_id in member_ids(autoscaling, name)  # --until-empty is not idle: it stays in the group
    assert protected(autoscaling, name, instance_id) is False  # and unprotected once the job is settled
    assert describe(autoscaling, name)["DesiredCapacity"] == 1
