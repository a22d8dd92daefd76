"""The worker's user data renders (as Terraform's templatefile would) into valid bash."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import tfmodel

TEMPLATE_TEXT = tfmodel.TEMPLATE.read_text(encoding="utf-8")

BASE_VALUES = {
    "stack": "spotsweep",
    "region": "eu-west-1",
    "queue_name": "spotsweep-jobs",
    "dlq_name": "spotsweep-jobs-dlq",
    "table_name": "spotsweep",
    "bucket": "spotsweep-artifacts-123456789012",
    "lease_s": 300,
    "max_receives": 5,
    "asg_name": "spotsweep-workers",
    "data_mount": "/data",
    "cache_dir": "/data/cache",
    "idle_timeout_s": 600,
    "price_per_hour": "",
    "worker_package": "",
    "worker_python": "/usr/bin/python3",
    "worker_image": "",
    "metadata_url": "http://169.254.169.254",
}

SCENARIOS = {
    "pip": {},
    "pip-with-price": {"price_per_hour": "0.526", "worker_package": "deploy/spotsweep-0.1.0-py3-none-any.whl"},
    "docker": {"worker_image": "ghcr.io/example/spotsweep-worker:0.1.0"},
    "docker-ecr": {"worker_image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/spotsweep-worker:0.1.0"},
}


def _templatefile_keys(tf) -> set[str]:
    call = tfmodel.expr(tf.locals["user_data"])
    args = call[call.index(", {") + 3 : call.rindex("}")]
    return set(re.findall(r"(?:^|,\s*)([a-z_][a-z0-9_]*)\s*=", args))


def render(**overrides) -> str:
    return tfmodel.render_template(TEMPLATE_TEXT, {**BASE_VALUES, **overrides})


def test_template_uses_only_plain_interpolations():
    assert "%{" not in TEMPLATE_TEXT, "template directives are not rendered by the CI check"
    for name in tfmodel.template_placeholders(TEMPLATE_TEXT):
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), f"${{{name}}} is not a plain variable"


def test_template_variables_match_the_templatefile_call(tf):
    assert tfmodel.template_placeholders(TEMPLATE_TEXT) <= _templatefile_keys(tf)
    assert _templatefile_keys(tf) == set(BASE_VALUES)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_user_data_is_valid_bash(scenario, tmp_path: Path):
    script = tmp_path / f"user_data_{scenario}.sh"
    script.write_text(render(**SCENARIOS[scenario]), encoding="utf-8")
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_user_data_passes_shellcheck(scenario, tmp_path: Path):
    script = tmp_path / f"user_data_{scenario}.sh"
    script.write_text(render(**SCENARIOS[scenario]), encoding="utf-8")
    result = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=warning", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_user_data_sets_every_setting():
    text = render()
    env_block = text.split('cat > "$ENV_FILE" <<EOF\n', 1)[1].split("\nEOF\n", 1)[0]
    env = dict(line.split("=", 1) for line in env_block.splitlines())
    assert env == {
        "SPOTSWEEP_BACKEND": "aws",
        "SPOTSWEEP_STACK": "spotsweep",
        "SPOTSWEEP_REGION": "eu-west-1",
        "SPOTSWEEP_QUEUE_NAME": "spotsweep-jobs",
        "SPOTSWEEP_DLQ_NAME": "spotsweep-jobs-dlq",
        "SPOTSWEEP_TABLE_NAME": "spotsweep",
        "SPOTSWEEP_BUCKET": "spotsweep-artifacts-123456789012",
        "SPOTSWEEP_LEASE_S": "300",
        "SPOTSWEEP_MAX_RECEIVES": "5",
        "SPOTSWEEP_CACHE_DIR": "/data/cache",
        "SPOTSWEEP_HOME": "/data/spotsweep",
        "SPOTSWEEP_METADATA_URL": "http://169.254.169.254",
        "SPOTSWEEP_ASG_NAME": "spotsweep-workers",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "KERAS_HOME": "/data/keras",
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    assert 'echo "SPOTSWEEP_PRICE_PER_HOUR=$PRICE_PER_HOUR" >> "$ENV_FILE"' in text


def test_rendered_user_data_runs_the_worker_under_systemd():
    text = render()
    assert 'EXEC_START="$VENV/bin/worker run --per-gpu --idle-timeout $IDLE_TIMEOUT_S"' in text
    assert 'IDLE_TIMEOUT_S="600"' in text
    assert "EnvironmentFile=$ENV_FILE" in text
    assert "RequiresMountsFor=$DATA_MOUNT" in text
    assert "systemctl enable --now spotsweep-worker.service" in text
    # Restarted unless it exits 0 (left the group, or not on AWS): 3 (stopped, not left) restarts.
    assert "Restart=always\nRestartPreventExitStatus=0\n" in text
    assert "OnFailure=spotsweep-leave.service" in text
    # The wheel from the stack's bucket, into a venv; without the worker extra the entry point
    # exits 1 with one line: the bootstrap stops there (and leaves the group).
    install = text.index('"$PY" -m pip install --no-cache-dir --disable-pip-version-check "spotsweep[worker] @ file://$WHEEL_FILE"')
    check = text.index('"$VENV/bin/worker" --help > /dev/null')
    assert text.index("WHEEL_FILE=$(fetch_wheel)") < install < check < text.index("systemctl enable --now spotsweep-worker.service")
    assert "WHEEL_POINTER_KEY=deploy/worker-wheel.txt" in text and "sha256sum --check" in text


def test_rendered_user_data_installs_cuda_tensorflow_on_a_gpu():
    text = render()
    assert "nvidia-smi -L" in text
    assert '"tensorflow[and-cuda]==$TF_VERSION"' in text  # the version the worker extra resolved


def test_a_failed_bootstrap_leaves_the_group():
    text = render()
    assert text.index("trap 'on_exit $?' EXIT") < text.index("step 1/5")  # armed before the first step
    assert "terminate-instance-in-auto-scaling-group" in text
    assert "--should-decrement-desired-capacity --no-should-decrement-desired-capacity" in text
    assert "shopt -s inherit_errexit" in text


def test_rendered_user_data_container_mode():
    text = render(**SCENARIOS["docker"])
    assert 'WORKER_IMAGE="ghcr.io/example/spotsweep-worker:0.1.0"' in text
    assert "docker run --rm --name spotsweep-worker --gpus all --network host --env-file $ENV_FILE" in text
    assert "--volume $DATA_MOUNT:$DATA_MOUNT $WORKER_IMAGE --per-gpu --idle-timeout $IDLE_TIMEOUT_S" in text


def test_rendered_user_data_logs_in_to_ecr_for_an_ecr_image():
    text = render(**SCENARIOS["docker-ecr"])
    login = text.index('aws ecr get-login-password --region "$REGISTRY_REGION" | docker login --username AWS --password-stdin "$REGISTRY"')
    assert text.index("*.dkr.ecr.*.amazonaws.com/*)") < login < text.index('retry docker pull "$WORKER_IMAGE"')


def test_rendered_user_data_container_drops_privileges():
    text = render(**SCENARIOS["docker"])
    (line,) = [line for line in text.splitlines() if line.strip().startswith('EXEC_START="/usr/bin/docker run')]
    assert "--cap-drop ALL" in line
    assert "--security-opt no-new-privileges" in line
    assert "--privileged" not in line and "--cap-add" not in line and "--user" not in line  # the image's uid 10001


def test_rendered_user_data_mounts_the_data_volume():
    text = render()
    assert 'DATA_MOUNT="/data"' in text
    assert 'mkfs.ext4 -q -L "$DATA_LABEL" "$DATA_DEV"' in text
    assert 'mountpoint -q "$DATA_MOUNT" || mount "$DATA_MOUNT"' in text


def test_user_data_holds_no_secrets():
    text = TEMPLATE_TEXT
    # `aws ecr get-login-password | docker login --password-stdin` fetches a password at boot
    # and pipes it: none is written in the user data, none on a command line.
    for needle in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "PASSWORD=", "TOKEN=", "--PASSWORD "):
        assert needle not in text.upper(), needle
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)


def test_renderer_rejects_what_it_cannot_render():
    with pytest.raises(ValueError):
        tfmodel.render_template("%{ if x }a%{ endif }", {})
    with pytest.raises(ValueError):
        tfmodel.render_template("${upper(x)}", {"x": 1})
    with pytest.raises(KeyError):
        tfmodel.render_template("${missing}", {})
    assert tfmodel.render_template("$${HOME} ${a}", {"a": 1}) == "${HOME} 1"
