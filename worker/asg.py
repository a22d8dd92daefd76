"""Scale-in safety on AWS: protect the instance while a job runs; a worker that is done leaves its group.

Leaving decrements the group's desired capacity, so the autoscaler does not start a replacement.
A worker is done when it has been idle `--idle-timeout` seconds, when its circuit breaker
tripped, or when a spot notice (a rebalance recommendation or an interruption) stopped it after
its job was checkpointed and put back.

`min_size` is respected: leaving with the desired capacity at the group's minimum would be
refused by AWS (the decrement would go below it), so the worker stays instead. It is then one
of the instances the group is meant to keep: its process exits "not left" (status 3), systemd
starts it again and it keeps taking work. (A rebalance notice on such an instance is the
price of a minimum: the interruption, if it comes, replaces it.)

Several worker processes on one instance (`--per-gpu`, `--concurrency`) share one protection
flag and one membership: protection stays on while any of them runs a job, and none leaves
while another runs one (`ProtectionHolders`: a file per busy process in the cache dir).

No protection or leave call ever crashes the worker: a failed call is one log line. Protection
that could not be set only exposes the running job to a scale-in (it is then put back by its
lease, as after a preemption); protection that could not be cleared is cleared by the next
call, or by leaving.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("spotsweep.worker")


class ScaleInGuard:
    """One instance's membership of its autoscaling group: scale-in protection, and leaving."""

    def __init__(self, autoscaling_client: Any, group_name: str, instance_id: str, holders_dir: Path | None = None) -> None:
        self.client, self.group_name, self.instance_id = autoscaling_client, group_name, instance_id
        self.holders = ProtectionHolders(holders_dir) if holders_dir is not None else None
        self._protected: bool | None = None
        self.left = False  # the instance left its group (its termination is under way)

    def protect(self, on: bool) -> None:
        """Set scale-in protection (idempotent); a failed call is logged and retried next time.
        With several worker processes on the instance, protection stays on while any of them
        runs a job (see `ProtectionHolders`)."""
        if self.holders is not None and not self.holders.update(on):
            log.info("scale-in protection stays on: another worker process here runs a job", extra={"event": "protection_held"})
            self._protected = None  # another process's job keeps it on; ours no longer needs it
            return
        if self._protected == on:
            return
        try:
            self.client.set_instance_protection(
                InstanceIds=[self.instance_id], AutoScalingGroupName=self.group_name, ProtectedFromScaleIn=on
            )
        except Exception as exc:  # the job runs on either way; an unprotected job is put back if scaled in
            log.warning("could not %s scale-in protection: %s", "set" if on else "clear", _one_line(exc),
                        extra={"event": "protection_failed"})
            self._protected = None  # unknown: the next call tries again
            return
        self._protected = on

    def leave(self) -> bool:
        """Terminate this instance with the group's desired capacity decremented; True once done.

        False (and the instance stays) when the group is at its `min_size`, when another worker
        process here runs a job, or when a call failed: each is one log line."""
        try:
            group = self._describe()
            if self._already_leaving(group):  # another worker process on this instance left first
                log.info("instance %s is already leaving group %s", self.instance_id, self.group_name, extra={"event": "leave_group"})
                self.left = True
                return True
            if self._at_minimum(group) or self._others_busy():
                return False
            log.info("leaving autoscaling group %s", self.group_name, extra={"event": "leave_group"})
            self.protect(False)
            self.client.terminate_instance_in_auto_scaling_group(
                InstanceId=self.instance_id, ShouldDecrementDesiredCapacity=True
            )
        except Exception as exc:  # e.g. another instance left first and the group reached its minimum
            log.warning("could not leave autoscaling group %s: %s", self.group_name, _one_line(exc),
                        extra={"event": "leave_failed"})
            return False
        self.left = True
        return True

    def _others_busy(self) -> bool:
        """Another worker process on this instance runs a job: leaving would end it mid-epoch
        (protection guards against scale-in only, not against a termination we ask for)."""
        if self.holders is None or self.holders.update(False):  # True: no other process holds it
            return False
        log.info("staying in autoscaling group %s: another worker process here runs a job", self.group_name,
                 extra={"event": "stay_in_group"})
        return True

    def _describe(self) -> dict[str, Any]:
        groups = self.client.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group_name])["AutoScalingGroups"]
        if not groups:
            raise LookupError(f"no autoscaling group named {self.group_name}")
        return groups[0]

    def _already_leaving(self, group: dict[str, Any]) -> bool:
        """This instance is no longer in service in the group: a second decrement would take
        another instance's place."""
        states = {i["InstanceId"]: i.get("LifecycleState", "") for i in group.get("Instances", [])}
        state = states.get(self.instance_id)
        if state is None:
            raise LookupError(f"instance {self.instance_id} is not a member of the group")
        return state.startswith(("Terminating", "Terminated", "Detach"))

    def _at_minimum(self, group: dict[str, Any]) -> bool:
        desired, minimum = group["DesiredCapacity"], group["MinSize"]
        if desired - 1 >= minimum:
            return False
        log.info("staying in autoscaling group %s: its desired capacity %d is its min_size", self.group_name, desired,
                 extra={"event": "stay_in_group"})
        return True


def _one_line(exc: BaseException) -> str:
    lines = f"{type(exc).__name__}: {exc}".splitlines()
    return lines[0][:300] if lines else type(exc).__name__


class ProtectionHolders:
    """Which worker processes on this instance run a job: one file per process, named by pid.

    The instance's protection is one flag shared by every worker process on it (`--per-gpu`,
    `--concurrency`): a process whose job ended must not clear it under another's running job.
    A holder whose process is gone (killed mid-job) does not count.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.mine = directory / str(os.getpid())

    def update(self, on: bool) -> bool:
        """Note this process's need; True when the instance's flag should be set to `on` now
        (also when the files cannot be kept: one process's view is then the best there is)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if on:
                self.mine.touch()
                return True
            self.mine.unlink(missing_ok=True)
            return not self._others_alive()
        except OSError as exc:
            log.warning("scale-in holders in %s: %s", self.directory, exc, extra={"event": "protection_failed"})
            return True

    def _others_alive(self) -> bool:
        alive = False
        for path in self.directory.iterdir():
            if _alive(path.name):
                alive = True
            else:
                path.unlink(missing_ok=True)  # a process killed mid-job: it holds nothing any more
        return alive


def _alive(pid_name: str) -> bool:
    try:
        os.kill(int(pid_name), 0)  # signal 0: only asks whether the process exists
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True
