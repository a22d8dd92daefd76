"""GPUs used well: a worker on a GPU machine trains on a GPU, and each GPU gets its own worker.

How the worker knows the machine has GPUs: `nvidia-smi -L` lists them. That is the driver's
own answer, true on any GPU instance type (no table of instance types to keep) and in a
container given the GPUs; off such a machine the command is absent or fails, and the list
is empty. `nvidia-smi` ignores CUDA_VISIBLE_DEVICES, so a per-GPU child still sees the
machine's GPUs there, while its TensorFlow sees only its own.

The check (`require_gpu`, on by default; `SPOTSWEEP_REQUIRE_GPU=false` turns it off): a
machine with GPUs whose TensorFlow sees none (a CPU-only build, a driver/CUDA mismatch) would
train on CPU at GPU prices, so the worker refuses to start, with one line.

Memory growth is turned on for every GPU TensorFlow sees, before any op runs: without it
each process maps nearly all of every GPU's memory at its first op.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from shared.errors import FatalError

log = logging.getLogger("spotsweep.worker")

NVIDIA_SMI_TIMEOUT_S = 20.0  # a wedged driver answers slowly or never


def machine_gpus() -> list[str]:
    """The GPUs `nvidia-smi -L` lists (one line each: "GPU 0: NVIDIA A10G (UUID: ...)"); [] when
    the command is missing or fails."""
    path = shutil.which("nvidia-smi")
    if path is None:
        return []
    try:
        done = subprocess.run([path, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("GPU ")]


def prepare_gpus(require_gpu: bool) -> int:
    """Turn memory growth on for each GPU TensorFlow sees and return how many it sees.

    Raises:
        FatalError: `require_gpu` and the machine has GPUs that TensorFlow does not see.
    """
    import tensorflow as tf  # the caller loads TensorFlow anyway; `worker --help` never gets here

    visible = tf.config.list_physical_devices("GPU")
    for device in visible:
        tf.config.experimental.set_memory_growth(device, True)  # before any op: only then may it be set
    if require_gpu and not visible:
        listed = machine_gpus()
        if listed:
            raise FatalError(
                f"this machine has {len(listed)} GPU(s) (nvidia-smi -L) but TensorFlow sees none: "
                f"install the CUDA build (pip install 'tensorflow[and-cuda]'), or set SPOTSWEEP_REQUIRE_GPU=false to train on CPU"
            )
    if visible:
        log.info("TensorFlow sees %d GPU(s), memory growth on", len(visible), extra={"event": "gpus", "data": {"gpus": len(visible)}})
    return len(visible)


def per_gpu_envs(base: dict[str, str], gpu_count: int) -> list[dict[str, str]]:
    """One environment per GPU, each child pinned to its own (`CUDA_VISIBLE_DEVICES=<i>`)."""
    return [{**base, "CUDA_VISIBLE_DEVICES": str(index)} for index in range(gpu_count)]
