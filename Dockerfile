# spotsweep worker image: `worker run` on a CUDA TensorFlow base.
#   docker build -t spotsweep-worker .
#   docker run --rm --gpus all --network host --env-file /etc/spotsweep/worker.env \
#     --cap-drop ALL --security-opt no-new-privileges \
#     --volume /data:/data spotsweep-worker --idle-timeout 600
# It runs as an unprivileged user (uid 10001) and needs no Linux capability.
# terraform/README.md ("Running the worker as a container") shows how the instances run it.

# The base pins TensorFlow (2.21.0, as pyproject.toml's tensorflow==2.21.*) with its CUDA/cuDNN.
FROM tensorflow/tensorflow:2.21.0-gpu

ARG SPOTSWEEP_UID=10001

# PIP_BREAK_SYSTEM_PACKAGES: the image's Python is the system one and this image is the
# worker's only environment (TensorFlow from the base is reused, not reinstalled).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    SPOTSWEEP_CACHE_DIR=/data/cache \
    SPOTSWEEP_HOME=/data/spotsweep \
    KERAS_HOME=/data/keras

WORKDIR /opt/spotsweep/src

# .dockerignore admits only what the package build needs (pyproject.toml, README.md and
# the shared/, submitter/, worker/ packages).
COPY . .

# Dependency versions come from pyproject.toml; the worker extra brings TensorFlow, Keras and
# TensorBoard (the base's TensorFlow satisfies its pin and is kept). DL3013 asks for a pinned
# version, which a local path with an extra (".[worker]") cannot carry.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[worker]" \
    && groupadd --system --gid "${SPOTSWEEP_UID}" spotsweep \
    && useradd --system --uid "${SPOTSWEEP_UID}" --gid spotsweep --create-home \
       --home-dir /home/spotsweep --shell /usr/sbin/nologin spotsweep \
    && mkdir -p /data/cache /data/keras /data/spotsweep \
    && chown -R spotsweep:spotsweep /data

USER ${SPOTSWEEP_UID}:${SPOTSWEEP_UID}
WORKDIR /home/spotsweep
VOLUME ["/data"]

# The CLI answers: the worker extra is installed and the package imports (the job loop itself
# reports through the job store's heartbeats).
HEALTHCHECK --interval=5m --timeout=30s --start-period=1m --retries=3 \
    CMD ["worker", "--help"]

ENTRYPOINT ["worker", "run"]
