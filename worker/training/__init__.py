"""Training, fine-tuning and evaluation of one job (Keras 3 on TensorFlow).

The worker loop calls `run_job(JobContext(...))` and gets a `JobResult`; everything else in this
package is how: models.py (architectures and head), optimizers.py, data.py (input pipeline),
features.py (feature cache), state.py (resumable state), logs.py (CSV, TensorBoard),
sessions.py / train.py (the loop), finetune.py, evaluate.py.
"""

from worker.training.context import EpochReport, JobContext, JobResult
from worker.training.runner import run_job

__all__ = ["EpochReport", "JobContext", "JobResult", "run_job"]
