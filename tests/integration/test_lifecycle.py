"""The worker's lifecycle in its autoscaling group, against moto's autoscaling API over HTTP
(moto's server, real boto3 requests) and a fake metadata service: a rebalance recommendation
stops new claims, the job is checkpointed and settled, then the instance leaves; `min_size` is
respected (the worker stays, exit 3); protection calls that fail are one log line each and
never stop a job; protection is cleared only after the job is settled."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from shared.jobs import JobSpec, JobStatus, ModelSpec, TrainingSpec, job_id_for
from shared.ports import Backend
from shared.submission import submit_jobs
from tests.fake_imds import FakeImds
from tests.integration.test_scale_in import client, describe, member_ids, protected
from tests.aws_support import REGION, moto_endpoint  # noqa: F401  (the session fixture)
from worker.asg import ScaleInGuard
from worker.cli import EXIT_NOT_LEFT, exit_status
from worker.imds import Imds, SpotWatcher
from worker.job import JobContext, JobResult, StopReason
from worker.loop import Policy, Worker
from worker.settings import WorkerSettings
from worker.stop import StopFlag

pytestmark = pytest.mark.aws

STUDY = "lifecycle-1"
STOPPED_WITHIN_S = 20.0


def make_group(endpoint: str, min_size: int, desired: int) -> dict[str, Any]:
    ec2, autoscaling = client("ec2", endpoint), client("autoscaling", endpoint)
    name = f"spotsweep-{uuid.uuid4().hex[:10]}"
    ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g4dn.xlarge"})
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateName": name, "Version": "$Latest"},
        MinSize=min_size, MaxSize=3, DesiredCapacity=desired, AvailabilityZones=[f"{REGION}a"],
    )
    ids = member_ids(autoscaling, name)
    assert len(ids) == desired, ids
    return {"name": name, "instance_id": ids[0], "autoscaling": autoscaling}


@pytest.fixture
def group(moto_endpoint: str) -> dict[str, Any]:  # noqa: F811
    return make_group(moto_endpoint, min_size=0, desired=1)


@pytest.fixture
def group_at_min(moto_endpoint: str) -> dict[str, Any]:  # noqa: F811
    return make_group(moto_endpoint, min_size=1, desired=1)


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    with FakeImds() as fake:
        yield fake


def settings_for(home: Path) -> WorkerSettings:
    return WorkerSettings(home=home, lease_s=3.0, max_receives=3, poll_wait_s=0.1, retry_backoff_s=0.0)


def submit_one(backend: Backend, dataset: Path) -> str:
    spec = JobSpec(dataset=str(dataset), model=ModelSpec(architecture="benchmark", image_size=32),
                   optimizer={"name": "adam"}, training=TrainingSpec(epochs=3))
    job_id = job_id_for(STUDY, spec)
    submit_jobs(backend.store, backend.queue, STUDY, [(job_id, spec)])
    return job_id


class RecordingGuard(ScaleInGuard):
    """The real guard, noting the job's status each time protection is cleared."""

    def __init__(self, *args: Any, backend: Backend, job_id: str) -> None:
        super().__init__(*args)
        self.backend, self.job_id = backend, job_id
        self.cleared_while: list[str] = []

    def protect(self, on: bool) -> None:
        if not on:
            record = self.backend.store.get_job(STUDY, self.job_id)
            self.cleared_while.append(record.status.value if record else "none")
        super().protect(on)


def test_rebalance_checkpoints_the_job_then_leaves_the_group(group, imds, local_backend, tiny_dataset, tmp_path):
    autoscaling, name, instance_id = group["autoscaling"], group["name"], group["instance_id"]
    job_id = submit_one(local_backend, tiny_dataset)
    guard = RecordingGuard(autoscaling, name, instance_id, backend=local_backend, job_id=job_id)
    stop = StopFlag()
    SpotWatcher(Imds(imds.url), stop, interval_s=0.05).start()
    seen: dict[str, Any] = {}

    def training(ctx: JobContext) -> JobResult:
        seen["protected"] = protected(autoscaling, name, instance_id)
        imds.arm_rebalance()  # mid-job: the watcher must stop the job at its next batch
        deadline = time.monotonic() + STOPPED_WITHIN_S
        while ctx.should_stop() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["reason"] = ctx.should_stop()
        return JobResult("stopped", seen["reason"], 1, 1, {}, 0.1, None, None, None, {})

    worker = Worker(local_backend, settings_for(tmp_path / "home"), training, stop,
                    on_idle_exit=guard.leave, protect=guard.protect)
    worker.work(Policy(idle_timeout_s=60))  # a rebalance ends the loop long before the idle timeout

    assert seen == {"protected": True, "reason": StopReason.PREEMPTED}
    record = local_backend.store.get_job(STUDY, job_id)
    assert record.status is JobStatus.QUEUED and record.epochs_run == 1  # checkpointed and put back
    assert local_backend.queue.counts().backlog == 1  # for another worker: this one claimed nothing more
    assert "running" not in guard.cleared_while  # protection came off only once the job was settled
    assert instance_id in member_ids(autoscaling, name)  # the loop itself does not leave on a notice

    assert exit_status(stop.reason, guard) == 0  # the worker leaves, then ends its unit cleanly
    assert instance_id not in member_ids(autoscaling, name)
    assert describe(autoscaling, name)["DesiredCapacity"] == 0  # no replacement on this capacity


def test_at_min_size_an_idle_worker_stays_and_exits_to_be_restarted(group_at_min, local_backend, tmp_path, caplog):
    autoscaling, name, instance_id = group_at_min["autoscaling"], group_at_min["name"], group_at_min["instance_id"]
    guard = ScaleInGuard(autoscaling, name, instance_id)

    def never_called(ctx: JobContext) -> JobResult:
        raise AssertionError("the queue is empty")

    stop = StopFlag()
    worker = Worker(local_backend, settings_for(tmp_path / "home"), never_called, stop,
                    on_idle_exit=guard.leave, protect=guard.protect)
    with caplog.at_level(logging.INFO, logger="spotsweep"):
        assert worker.work(Policy(idle_timeout_s=0.3)) == 0
    assert exit_status(stop.reason, guard) == EXIT_NOT_LEFT  # systemd starts it again: it keeps working
    assert guard.left is False
    assert member_ids(autoscaling, name) == [instance_id]
    assert describe(autoscaling, name)["DesiredCapacity"] == 1
    assert any(getattr(r, "event", None) == "stay_in_group" for r in caplog.records)


def test_a_failed_leave_is_one_line_and_exit_3(group, caplog):
    autoscaling, name = group["autoscaling"], group["name"]
    guard = ScaleInGuard(autoscaling, name, "i-00000000000000000")  # not a member: the leave fails
    with caplog.at_level(logging.INFO, logger="spotsweep"):
        assert exit_status("spot rebalance recommendation", guard) == EXIT_NOT_LEFT
    failures = [r for r in caplog.records if getattr(r, "event", None) == "leave_failed"]
    assert len(failures) == 1 and "\n" not in failures[0].getMessage()
    assert describe(autoscaling, name)["DesiredCapacity"] == 1


def test_protection_errors_are_logged_and_the_job_still_succeeds(moto_endpoint, local_backend, tiny_dataset, tmp_path, caplog):  # noqa: F811
    autoscaling = client("autoscaling", moto_endpoint)
    guard = ScaleInGuard(autoscaling, f"no-such-group-{uuid.uuid4().hex[:8]}", "i-00000000000000000")
    job_id = submit_one(local_backend, tiny_dataset)

    def training(ctx: JobContext) -> JobResult:
        return JobResult("completed", None, 1, 1, {"val_accuracy": 0.5, "val_loss": 1.0}, 0.01, 10, 10, None, {})

    stop = StopFlag()
    worker = Worker(local_backend, settings_for(tmp_path / "home"), training, stop, on_idle_exit=guard.leave, protect=guard.protect)
    with caplog.at_level(logging.INFO, logger="spotsweep"):
        assert worker.work(Policy(until_empty=True)) == 1
    assert local_backend.store.get_job(STUDY, job_id).status is JobStatus.SUCCEEDED
    failed = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "protection_failed"]
    assert failed and failed[0].startswith("could not set scale-in protection"), failed
    assert exit_status(stop.reason, guard) == EXIT_NOT_LEFT  # --until-empty in a group: not left


def test_a_process_ending_its_job_leaves_protection_on_for_another_processs_job(group, tmp_path):
    """Two worker processes on one instance (`--per-gpu`): the second holder is a real live
    process (a sleeping child), so the first one's end of job must not clear the flag."""
    import subprocess
    import sys

    autoscaling, name, instance_id = group["autoscaling"], group["name"], group["instance_id"]
    holders = tmp_path / "holders"
    guard = ScaleInGuard(autoscaling, name, instance_id, holders)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        guard.protect(True)
        (holders / str(other.pid)).touch()  # the other process's job is running
        guard.protect(False)
        assert protected(autoscaling, name, instance_id) is True
    finally:
        other.kill()
        other.wait()
    guard.protect(True)
    guard.protect(False)  # the other process is gone: its holder no longer counts
    assert protected(autoscaling, name, instance_id) is False
    assert list(holders.iterdir()) == []


def test_an_idle_process_does_not_terminate_the_instance_under_another_processs_job(group, tmp_path):
    import subprocess
    import sys

    autoscaling, name, instance_id = group["autoscaling"], group["name"], group["instance_id"]
    holders = tmp_path / "holders"
    holders.mkdir()
    guard = ScaleInGuard(autoscaling, name, instance_id, holders)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (holders / str(other.pid)).touch()  # the other process's job is running
        assert guard.leave() is False
        assert instance_id in member_ids(autoscaling, name)
    finally:
        other.kill()
        other.wait()
    assert guard.leave() is True  # alone now: it leaves
    assert instance_id not in member_ids(autoscaling, name)
