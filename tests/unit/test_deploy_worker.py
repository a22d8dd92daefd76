"""The worker's wheel (submitter.deploy.publish_worker, `submit deploy worker`), offline.

The real build, upload and install on a booting instance are tests/integration/test_boot.py.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from shared.errors import BadInputError, FatalError
from submitter import deploy
from submitter.settings import SubmitterSettings

REPO = Path(__file__).resolve().parents[2]


def fake_wheel(path: Path, files: list[str], metadata: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in files:
            archive.writestr(name, "")
        archive.writestr("spotsweep-0.1.0.dist-info/METADATA", metadata)
    return path


def test_the_wheel_key_is_what_terraform_accepts():
    assert deploy.worker_wheel_key("0.1.0") == "deploy/spotsweep-0.1.0-py3-none-any.whl"
    assert deploy.WORKER_POINTER_KEY == "deploy/worker-wheel.txt"
    template = (REPO / "terraform" / "templates" / "user_data.sh.tftpl").read_text()
    assert f"WHEEL_POINTER_KEY={deploy.WORKER_POINTER_KEY} " in template  # the bootstrap reads this one


def test_a_wheel_with_its_packages_and_the_worker_extra_passes(tmp_path):
    wheel = fake_wheel(tmp_path / "spotsweep-0.1.0-py3-none-any.whl", list(deploy.WORKER_WHEEL_FILES),
                       "Name: spotsweep\nProvides-Extra: worker\n")
    deploy.check_worker_wheel(wheel)


def test_a_wheel_without_the_worker_or_its_extra_is_refused(tmp_path):
    wheel = fake_wheel(tmp_path / "spotsweep-0.1.0-py3-none-any.whl", ["shared/__init__.py"], "Name: spotsweep\n")
    with pytest.raises(FatalError) as caught:
        deploy.check_worker_wheel(wheel)
    assert "no worker/__main__.py" in str(caught.value) and "no worker extra" in str(caught.value)
    with pytest.raises(FatalError, match="did not write"):
        deploy.check_worker_wheel(tmp_path / "missing.whl")


def test_publishing_the_worker_on_the_local_backend_is_refused(tmp_path):
    config = SubmitterSettings(backend="local", home=tmp_path / "home")
    with pytest.raises(BadInputError, match="SPOTSWEEP_BACKEND=aws") as refused:
        deploy.publish_worker(config)
    assert refused.value.path == "backend" and not (tmp_path / "home").exists()  # nothing opened, nothing built


def test_building_the_wheel_from_a_directory_that_is_no_checkout_is_refused(tmp_path):
    with pytest.raises(BadInputError, match="not a spotsweep source checkout") as refused:
        deploy.build_worker_wheel(tmp_path, tmp_path / "out")
    assert refused.value.path == "--source" and not (tmp_path / "out").exists()


def test_submit_deploy_worker_on_the_local_backend_exits_2_with_one_line(tmp_path):
    result = subprocess.run([str(Path(sys.executable).parent / "submit"), "deploy", "worker"], capture_output=True,
                            text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "SPOTSWEEP_BACKEND": "local", "SPOTSWEEP_HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "SPOTSWEEP_BACKEND=aws" in result.stderr
