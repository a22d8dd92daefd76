"""Training, fine-tuning and evaluation of one job (Keras 3 on TensorFlow).

The worker loop calls a `JobRunner` (or `run_job`) with a `JobContext` and gets a `JobResult`
(those types live in `worker.job`, which loads no TensorFlow, and are re-exported here);
everything else in this package is how: models.py (architectures and head), optimizers.py,
data.py (input pipeline), features.py (feature cache), state.py (resumable state), logs.py
(CSV, TensorBoard), sessions.py / train.py (the loop), finetune.py, evaluate.py.
"""

from worker.job import EpochReport, JobContext, JobResult
from worker.training.runner import JobRunner, run_job

__all__ = ["EpochReport", "JobContext", "JobResult", "JobRunner", "run_job"]
