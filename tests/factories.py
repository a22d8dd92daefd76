"""Small builders for test data (real domain objects, no mocks)."""

from __future__ import annotations

import time

from shared.jobs import JobRecord, JobSpec, ModelSpec, StudyRecord, TrainingSpec, job_id_for


def job_spec(architecture: str = "benchmark", learning_rate: float = 0.01, **training: object) -> JobSpec:
    return JobSpec(
        dataset="/data/flowers",
        model=ModelSpec(architecture=architecture, image_size=32),
        optimizer={"name": "sgd", "learning_rate": learning_rate},
        training=TrainingSpec(**training),
    )


def job_record(study_id: str = "s-1", learning_rate: float = 0.01, **fields: object) -> JobRecord:
    spec = job_spec(learning_rate=learning_rate)
    return JobRecord(study_id=study_id, job_id=job_id_for(study_id, spec), spec=spec, created_at=time.time(), **fields)


def study_record(study_id: str = "s-1", created_at: float | None = None) -> StudyRecord:
    return StudyRecord(
        study_id=study_id, name=study_id, created_at=created_at or time.time(), spec={"name": study_id}
    )
