"""Submission of a large study: jobs/s on the embedded backend (2,000 jobs), and API calls per
job on the AWS backend (moto), counted with botocore event hooks, against one call per job."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.common import Dataset, Row

EMBEDDED_JOBS = 2000
AWS_JOBS = 2000  # lowered by run() to AWS_FALLBACK_JOBS if moto is too slow (the 200-job probe predicts > 45s)
AWS_FALLBACK_JOBS = 400


def study_text(name: str, jobs: int) -> str:
    # grid: 20 learning rates x 10 momenta x batch sizes (jobs / 200)
    assert jobs % 200 == 0
    return json.dumps({
        "name": name,
        "dataset": "artifacts:datasets/bench-flowers",
        "image_size": 64,
        "parameters": {
            "architecture": ["benchmark"],
            "weights": [None],
            "optimizer": [{
                "name": "sgd",
                "learning_rate": [round(0.001 * (i + 1), 4) for i in range(20)],
                "momentum": [round(0.1 * i, 1) for i in range(10)],
            }],
            "batch_size": [8 * (i + 1) for i in range(jobs // 200)],
        },
        "training": {"epochs": 5},
    })


def submit(backend, name: str, jobs: int) -> tuple[float, int]:
    from shared.study import expand, job_count, parse_study
    from shared.submission import submit_jobs

    spec = parse_study(study_text(name, jobs), "bench")
    assert job_count(spec) == jobs, job_count(spec)
    started = time.perf_counter()
    report = submit_jobs(backend.store, backend.queue, spec.study_id, expand(spec))
    seconds = time.perf_counter() - started
    assert report.created == jobs and report.sent == jobs, report
    return seconds, jobs


def run(workdir: Path, dataset: Dataset) -> list[Row]:
    from shared.backends.factory import open_local
    from shared.config import BackendConfig

    local = open_local(BackendConfig(backend="local", home=workdir / "home"))
    seconds, n = submit(local, "bench-submit", EMBEDDED_JOBS)
    rows = [Row(f"submission: embedded backend, {n} jobs (jobs/s)", n / seconds, float("nan"), "jobs/s", None,
                "(info)", None, f"{seconds:.2f}s for {n} jobs")]
    rows += aws_rows()
    return rows


def aws_rows() -> list[Row]:
    from bench.aws import cleanup, moto_backend
    from tests.aws_support import DYNAMO_WRITES, CallCounter

    try:
        backend, session, config = moto_backend()
    except Exception as exc:  # noqa: BLE001
        return [Row("submission: AWS backend (moto)", float("nan"), 1.0, "calls/job", None, "<= 0.15", False,
                    f"moto failed: {exc!r:.100}")]
    try:
        counter = CallCounter(backend.queue.client, backend.store.client)
        # a probe of 200 jobs to see how fast moto is here; then the full size if it fits
        probe_s, _ = submit(backend, "bench-aws-probe", 200)
        n = AWS_JOBS if probe_s * AWS_JOBS / 200 < 45 else AWS_FALLBACK_JOBS
        counter.reset()
        seconds, n = submit(backend, "bench-aws", n)
        sqs = counter.count("sqs")
        writes = counter.count("dynamodb", DYNAMO_WRITES)
        reads = counter.count("dynamodb") - writes
    finally:
        cleanup(config, session)
    sqs_per, writes_per = sqs / n, writes / n
    note = f"N={n} on moto, {seconds:.1f}s; sqs {counter.operations('sqs')}, dynamodb {counter.operations('dynamodb')}"
    return [
        Row("submission: AWS SQS calls per job", sqs_per, 1.0, "calls/job", 1.0 / sqs_per if sqs_per else float("inf"),
            "<= 0.15", sqs_per <= 0.15, note, {"n": n, "sqs_calls": sqs}),
        Row("submission: AWS DynamoDB write calls per job", writes_per, 1.0, "calls/job",
            1.0 / writes_per if writes_per else float("inf"), "<= 0.06", writes_per <= 0.06,
            f"N={n}; plus {reads} DynamoDB read calls", {"n": n, "dynamodb_writes": writes, "dynamodb_reads": reads}),
    ]
