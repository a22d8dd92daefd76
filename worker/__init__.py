"""The spotsweep worker: pulls jobs from the queue and trains them (`worker run`)."""
