"""The boot test: from the rendered user data on a bare "instance" to a SUCCEEDED job, offline.

terraform/templates/user_data.sh.tftpl is rendered with the renderer ci/infra uses
(ci/infra/tftemplate.py) and run with bash on this machine, as cloud-init would run it, in a
sandbox: SPOTSWEEP_ROOT puts every file it writes under a temporary directory, and PATH starts
with shims for the host-level commands (`SHIMS`). What is real: bash running the whole script;
the wheel built by `submit deploy worker` and published to moto's S3 over HTTP; the pointer and
its SHA-256 check; `aws s3 cp` and `aws autoscaling ...` calls (a shim that makes them with boto3
against moto, autoscaling group and instance included); the IMDSv2 calls (tests/fake_imds.py);
a fresh venv made by `python -m venv`, with the wheel installed into it by pip with the worker
extra; the unit file the script writes, whose ExecStart, User-less, runs the installed `worker`
with the unit's EnvironmentFile; the worker claiming and training a real job, then leaving the
group when idle and exiting 0.

What it does not prove (a real instance is needed):
- Dependencies come from this test's environment, not PyPI: installing TensorFlow into a fresh
  venv from PyPI is minutes and network. The venv is plain, but a .pth file puts a copy of this
  environment's site-packages (less spotsweep itself) after the venv's own, and pip runs with
  --no-index: it resolves the wheel's declared requirements against what is there, and would fail
  if one were missing. `tensorflow[and-cuda]` (GPU instances only) is not installed: the
  nvidia-smi shim reports no GPU.
- mount/mkfs/lsblk/blkid are shims (no disk is formatted), useradd/chown are shims (the worker
  runs as this test's user), and systemd's semantics (Restart=, RestartPreventExitStatus=,
  StartLimitBurst=, OnFailure=) are not exercised: the systemctl shim starts ExecStart once.
- Credentials come from the environment (moto's dummy keys), not from the instance profile.
- Whether the AMI's python3 is 3.12 with ensurepip, and the AWS CLI's real argument parsing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import boto3
import pytest

from shared.status import JobStatus
from tests.aws_support import REGION, aws_config, aws_subprocess_env, unique_stack, use_moto_env
from tests.e2e.conftest import env_for, submit, submit_json
from tests.fake_imds import FakeImds

pytestmark = [pytest.mark.aws]

REPO = Path(__file__).resolve().parents[2]
STEPS = ["[1/5] data volume", "[2/5] settings", "[3/5] installing the worker", "[4/5] systemd unit",
         "[5/5] starting spotsweep-worker.service", "spotsweep worker started"]
IDLE_TIMEOUT_S = 5  # the rendered `worker run --idle-timeout`: leave soon after the job
BOOTSTRAP_TIMEOUT_S = 300
JOB_TIMEOUT_S = 600


def _load_renderer():
    spec = importlib.util.spec_from_file_location("tftemplate", REPO / "ci" / "infra" / "tftemplate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- shims for the host-level commands ------------------------------------------------------------
# Each logs its call to $SPOTSWEEP_ROOT/shims.log. Python shims run on this test's interpreter.

SHELL_SHIMS = {
    "findmnt": 'echo /dev/nvme0n1p1',
    "lsblk": 'case "$*" in *PKNAME*) echo nvme0n1 ;; *) printf "%s\\n" "/dev/nvme0n1 Amazon Elastic Block Store" '
             '"/dev/nvme1n1 Amazon EC2 NVMe Instance Storage" "/dev/nvme2n1 Amazon Elastic Block Store" ;; esac',
    "blkid": "exit 2",  # no filesystem yet: the first boot formats
    "mkfs.ext4": "exit 0",
    "mountpoint": "exit 1",
    "mount": "exit 0",
    "id": "exit 1",
    "getent": "exit 2",
    "groupadd": "exit 0",
    "useradd": "exit 0",
    "chown": "exit 0",
    "poweroff": "exit 0",
    "logger": "cat",  # the script's log reaches the test's captured stdout (and the log file)
    "nvidia-smi": 'echo "No devices were found"; exit 6',  # a CPU machine: no CUDA TensorFlow
    "docker": "exit 0",
}

AWS_SHIM = r'''
"""`aws` for the boot test: the calls the bootstrap makes, with boto3 (AWS_ENDPOINT_URL: moto)."""
import sys
import boto3

args = sys.argv[1:]
options, positional, i = {}, [], 0
while i < len(args):
    if args[i].startswith("--"):
        flag = args[i][2:]
        if i + 1 < len(args) and not args[i + 1].startswith("--") and flag in ("region", "instance-id"):
            options[flag], i = args[i + 1], i + 2
            continue
        options[flag], i = True, i + 1
        continue
    positional.append(args[i])
    i += 1
region = options.get("region", "us-east-1")
try:
    if positional[:2] == ["s3", "cp"]:
        bucket, key = positional[2].removeprefix("s3://").split("/", 1)
        boto3.client("s3", region_name=region).download_file(bucket, key, positional[3])
    elif positional[:2] == ["autoscaling", "terminate-instance-in-auto-scaling-group"]:
        boto3.client("autoscaling", region_name=region).terminate_instance_in_auto_scaling_group(
            InstanceId=options["instance-id"],
            ShouldDecrementDesiredCapacity="should-decrement-desired-capacity" in options)
    else:
        sys.exit(f"aws shim: unsupported call {args}")
except Exception as exc:  # the CLI prints the error and exits non-zero
    sys.exit(f"aws: {exc}")
'''

PYTHON_SHIM = r'''
"""The AMI's python3 for the boot test: this interpreter; `-m venv DIR` also adds DEPS_PTH."""
import os, subprocess, sys

DEPS_DIR = {deps_dir!r}
real = {real!r}
code = subprocess.call([real, *sys.argv[1:]])
if code == 0 and sys.argv[1:3] == ["-m", "venv"]:
    venv = sys.argv[-1]
    site = subprocess.check_output([os.path.join(venv, "bin", "python"), "-c",
                                    "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip()
    with open(os.path.join(site, "_boot_test_dependencies.pth"), "w") as f:
        f.write(DEPS_DIR + "\n")
sys.exit(code)
'''

SYSTEMCTL_SHIM = r'''
"""`systemctl` for the boot test: `enable --now UNIT` starts the unit's ExecStart once, detached,
with its EnvironmentFile, output to $SPOTSWEEP_ROOT/journal/UNIT.log and the exit status to
$SPOTSWEEP_ROOT/run/UNIT.exit. Everything else is logged and succeeds."""
import os, subprocess, sys

root = os.environ["SPOTSWEEP_ROOT"]
args = sys.argv[1:]
if args[:1] == ["--run"]:  # the detached runner
    unit_path, name = args[1], os.path.basename(args[1])
    fields = dict(line.split("=", 1) for line in open(unit_path).read().splitlines() if "=" in line)
    env = dict(os.environ)
    for line in open(fields["EnvironmentFile"]).read().splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    with open(os.path.join(root, "journal", name + ".log"), "w") as log:
        code = subprocess.call(fields["ExecStart"].split(), env=env, cwd=fields["WorkingDirectory"],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    with open(os.path.join(root, "run", name + ".exit"), "w") as f:
        f.write(str(code))
    sys.exit(0)
if args[:2] == ["enable", "--now"] and args[2].endswith(".service"):
    unit = os.path.join(root, "etc", "systemd", "system", args[2])
    for folder in ("journal", "run"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    process = subprocess.Popen([sys.executable, __file__, "--run", unit], start_new_session=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    open(os.path.join(root, "run", args[2] + ".pid"), "w").write(str(process.pid))
'''


def _logged(name: str, body: str) -> str:
    return f'#!/bin/bash\necho "{name} $*" >> "$SPOTSWEEP_ROOT/shims.log"\n{body}\n'


def _python_logged(name: str, body: str) -> str:
    log = f'import os, sys\nopen(os.environ["SPOTSWEEP_ROOT"] + "/shims.log", "a").write("{name} " + " ".join(sys.argv[1:]) + "\\n")\n'
    return f"#!{sys.executable}\n{log}{body}"


def make_shims(bin_dir: Path, deps_dir: Path) -> Path:
    """The shims in `bin_dir`; returns the path of the python3 the user data is rendered with."""
    bin_dir.mkdir(parents=True)
    scripts = {name: _logged(name, body) for name, body in SHELL_SHIMS.items()}
    scripts["aws"] = _python_logged("aws", AWS_SHIM)
    scripts["systemctl"] = _python_logged("systemctl", SYSTEMCTL_SHIM)
    scripts["python3"] = _python_logged("python3", PYTHON_SHIM.format(deps_dir=str(deps_dir), real=sys.executable))
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir / "python3"


def dependencies_dir(target: Path) -> Path:
    """This environment's site-packages as links, less spotsweep itself (its editable install and
    its packages): the fresh venv must import shared/, submitter/ and worker/ from the wheel."""
    own = ("spotsweep", "__editable__", "shared", "submitter", "worker", "distutils-precedence", "__pycache__")
    target.mkdir(parents=True)
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(own) and not entry.name.endswith(".pth"):
            (target / entry.name).symlink_to(entry)
    return target


# --- the stack ------------------------------------------------------------------------------------


def group_with_one_instance(name: str, min_size: int = 0) -> str:
    """An autoscaling group on moto with one instance; its id."""
    ec2 = boto3.client("ec2", region_name=REGION)
    image_id = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    autoscaling = boto3.client("autoscaling", region_name=REGION)
    autoscaling.create_launch_configuration(LaunchConfigurationName=name, ImageId=image_id, InstanceType="g4dn.xlarge")
    autoscaling.create_auto_scaling_group(AutoScalingGroupName=name, LaunchConfigurationName=name, MinSize=min_size,
                                          MaxSize=2, DesiredCapacity=1, AvailabilityZones=[f"{REGION}a"])
    (instance,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]["Instances"]
    return instance["InstanceId"]


def group_members(name: str) -> tuple[list[str], int]:
    (group,) = boto3.client("autoscaling", region_name=REGION).describe_auto_scaling_groups(
        AutoScalingGroupNames=[name])["AutoScalingGroups"]
    return [i["InstanceId"] for i in group["Instances"]], group["DesiredCapacity"]


def render_user_data(stack: str, root: Path, python: Path, metadata_url: str) -> str:
    config = aws_config(stack)
    values = {
        "stack": stack, "region": REGION, "queue_name": config.resolved_queue_name,
        "dlq_name": config.resolved_dlq_name, "table_name": config.resolved_table_name,
        "bucket": config.resolved_bucket, "lease_s": 300, "max_receives": 5, "asg_name": f"{stack}-workers",
        "data_mount": str(root / "data"), "cache_dir": str(root / "data" / "cache"),
        "idle_timeout_s": IDLE_TIMEOUT_S, "price_per_hour": "0.526", "worker_package": "",
        "worker_python": str(python), "worker_image": "", "metadata_url": metadata_url,
    }
    renderer = _load_renderer()
    return renderer.render_template(renderer.TEMPLATE.read_text(encoding="utf-8"), values)


def bootstrap_env(endpoint: str, root: Path, bin_dir: Path) -> dict[str, str]:
    """What cloud-init's root shell would have, plus moto's credentials; pip offline and with no
    configuration of this machine's (its wheel folders would hide a missing dependency)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "SPOTSWEEP_", "VIRTUAL_ENV"))}
    return {**aws_subprocess_env(endpoint, base), "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "SPOTSWEEP_ROOT": str(root), "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull,
            "CUDA_VISIBLE_DEVICES": "-1", "SPOTSWEEP_POLL_WAIT_S": "1"}


def run_bootstrap(script: str, root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    root.mkdir(parents=True, exist_ok=True)
    path = root.parent / "user_data.sh"  # cloud-init keeps it apart too (/var/lib/cloud)
    path.write_text(script, encoding="utf-8")
    result = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=BOOTSTRAP_TIMEOUT_S)
    print(f"--- bootstrap output (exit {result.returncode}) ---\n{result.stdout}{result.stderr}")
    return result


def wait_for_exit(root: Path, timeout_s: float) -> int:
    exit_file = root / "run" / "spotsweep-worker.service.exit"
    deadline = time.monotonic() + timeout_s
    while not exit_file.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker did not exit in {timeout_s:.0f} s")
        time.sleep(1)
    return int(exit_file.read_text())


def stop_worker(root: Path) -> None:
    pid_file = root / "run" / "spotsweep-worker.service.pid"
    if pid_file.exists() and not (root / "run" / "spotsweep-worker.service.exit").exists():
        try:
            os.killpg(int(pid_file.read_text()), 9)  # the runner's own session: it and the worker
        except ProcessLookupError:
            pass


def one_job_study(path: Path, dataset: str) -> Path:
    study = {
        "name": "boot", "dataset": dataset, "image_size": 32, "validation_split": 0.25, "seed": 3,
        "parameters": {"architecture": ["benchmark"], "weights": [None], "optimizer": [{"name": "adam"}],
                       "batch_size": [8]},
        "training": {"epochs": 1}, "head": {"units": 16},
    }
    path.write_text(json.dumps(study))
    return path


def assert_steps_in_order(output: str, steps: list[str]) -> None:
    positions = [output.find(f"spotsweep bootstrap {step}") if step.startswith("[") else output.find(step)
                 for step in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions) if p == -1]
    assert positions == sorted(positions), positions


# --- the tests ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_bare_instance_boots_installs_the_published_wheel_and_finishes_a_job(
    tmp_path, tiny_dataset, moto_endpoint, request
):
    stack = unique_stack("boot")
    env = {**env_for(tmp_path / "home"), **aws_subprocess_env(moto_endpoint, {}), "SPOTSWEEP_BACKEND": "aws",
           "SPOTSWEEP_STACK": stack, "SPOTSWEEP_REGION": REGION}
    submit(env, "init")
    bucket = aws_config(stack).resolved_bucket
    submit(env, "dataset", "upload", str(tiny_dataset), f"s3://{bucket}/datasets/tiny")
    assert submit_json(env, "study", str(one_job_study(tmp_path / "s.json", f"s3://{bucket}/datasets/tiny")))["created"] == 1
    published_key = submit(env, "deploy", "worker").stdout.strip()
    assert published_key == "deploy/spotsweep-0.1.0-py3-none-any.whl"

    use_moto_env(request, moto_endpoint)
    instance_id = group_with_one_instance(f"{stack}-workers")
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    python = make_shims(bin_dir, dependencies_dir(tmp_path / "deps"))
    with FakeImds(instance_id=instance_id, availability_zone=f"{REGION}a") as imds:
        try:
            result = run_bootstrap(render_user_data(stack, root, python, imds.url), root,
                                   bootstrap_env(moto_endpoint, root, bin_dir))
            assert result.returncode == 0, result.stderr[-3000:]
            assert_steps_in_order(result.stdout, STEPS)
            code = wait_for_exit(root, JOB_TIMEOUT_S)
        finally:
            stop_worker(root)
    journal = (root / "journal" / "spotsweep-worker.service.log").read_text()
    print(f"--- worker journal (exit {code}) ---\n{journal[-4000:]}")

    venv_python = root / "opt" / "spotsweep" / "venv" / "bin" / "python"
    where = subprocess.run([str(venv_python), "-c", "import worker, shared; print(worker.__file__, shared.__file__)"],
                           capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, check=True).stdout
    venv = root / "opt" / "spotsweep" / "venv"
    assert all(path.startswith(str(venv)) for path in where.split()), where  # the wheel's code, not the checkout's
    assert list(venv.glob("lib/python*/site-packages/spotsweep-0.1.0.dist-info/METADATA"))
    assert code == 0, journal[-3000:]  # it left the group when idle: the unit would not restart it
    rows = submit_json(env, "leaderboard")["rows"]
    assert [row["status"] for row in rows] == [JobStatus.SUCCEEDED.value]
    members, desired = group_members(f"{stack}-workers")
    assert instance_id not in members and desired == 0


def test_failed_bootstrap_takes_the_instance_out_of_its_group(tmp_path, moto_endpoint, request):
    """No wheel was published: the bootstrap stops at [3/5] and the instance leaves the group,
    its desired capacity decremented, instead of staying InService without a worker."""
    stack = unique_stack("bootfail")
    env = {**env_for(tmp_path / "home"), **aws_subprocess_env(moto_endpoint, {}), "SPOTSWEEP_BACKEND": "aws",
           "SPOTSWEEP_STACK": stack, "SPOTSWEEP_REGION": REGION}
    submit(env, "init")
    use_moto_env(request, moto_endpoint)
    instance_id = group_with_one_instance(f"{stack}-workers")
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    python = make_shims(bin_dir, tmp_path / "deps-unused")
    with FakeImds(instance_id=instance_id, availability_zone=f"{REGION}a") as imds:
        result = run_bootstrap(render_user_data(stack, root, python, imds.url), root,
                               bootstrap_env(moto_endpoint, root, bin_dir))
    assert result.returncode != 0
    assert_steps_in_order(result.stdout, STEPS[:3] + ["spotsweep bootstrap FAILED", "left the group"])
    assert "[4/5]" not in result.stdout and not (root / "etc" / "systemd" / "system" / "spotsweep-worker.service").exists()
    members, desired = group_members(f"{stack}-workers")
    assert instance_id not in members and desired == 0
    assert "terminate-instance-in-auto-scaling-group" in (root / "shims.log").read_text()
    assert "poweroff" not in (root / "shims.log").read_text()
