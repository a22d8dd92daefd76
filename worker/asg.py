"""Scale-in safety on AWS: protect the instance while a job runs; an idle worker leaves its group.

Leaving decrements the group's desired capacity, so the autoscaler does not start a replacement.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("spotsweep.worker")


class ScaleInGuard:
    def __init__(self, autoscaling_client: Any, group_name: str, instance_id: str) -> None:
        self.client, self.group_name, self.instance_id = autoscaling_client, group_name, instance_id
        self._protected: bool | None = None

    def protect(self, on: bool) -> None:
        if self._protected == on:
            return
        self.client.set_instance_protection(
            InstanceIds=[self.instance_id], AutoScalingGroupName=self.group_name, ProtectedFromScaleIn=on
        )
        self._protected = on

    def leave(self) -> None:
        log.info("leaving autoscaling group %s", self.group_name, extra={"event": "leave_group"})
        self.protect(False)
        self.client.terminate_instance_in_auto_scaling_group(
            InstanceId=self.instance_id, ShouldDecrementDesiredCapacity=True
        )
