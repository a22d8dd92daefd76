"""A submitter that installs light: `pip install .` gives `submit` without TensorFlow; the worker
is the `worker` extra, and without it says so in one line.

The first test runs the real console commands in fresh processes of this venv and looks at what
they imported. The second (slow: it downloads the submitter's dependencies from PyPI, or takes
them from pip's cache) installs the package into a fresh venv, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "keras", "tensorboard")
# What `pip install .` builds from (the Dockerfile's .dockerignore admits the same).
PACKAGE_FILES = ("pyproject.toml", "README.md", "shared", "submitter", "worker")

# Runs `submit ARGS...` in this process, then reports the exit code and every heavy module loaded.
HARNESS = textwrap.dedent(
    """
    import json, sys
    from submitter.cli import app
    try:
        app(args=sys.argv[2:], prog_name="submit")
        code = 0
    except SystemExit as exc:
        code = exc.code
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
    with open(sys.argv[1], "w") as out:
        json.dump({{"code": code, "heavy": heavy}}, out)
    """
).format(heavy=set(HEAVY))


def _submit_in_fresh_process(tmp_path: Path, env: dict[str, str], *args: str) -> dict:
    report = tmp_path / "imports.json"
    result = subprocess.run([sys.executable, "-c", HARNESS, str(report), *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert report.exists(), result.stderr[-2000:]
    return {**json.loads(report.read_text()), "stdout": result.stdout, "stderr": result.stderr}


def test_submit_help_and_status_never_import_tensorflow_or_keras(tmp_path, tiny_dataset):
    env = {**os.environ, "SPOTSWEEP_HOME": str(tmp_path / "home"), "SPOTSWEEP_BACKEND": "local"}
    study = json.loads((REPO / "examples" / "sweep.json").read_text())
    study_file = tmp_path / "sweep.json"
    study_file.write_text(json.dumps({**study, "dataset": str(tiny_dataset), "image_size": 32}))

    runs = {
        "help": _submit_in_fresh_process(tmp_path, env, "--help"),
        "study": _submit_in_fresh_process(tmp_path, env, "study", str(study_file)),
        "status": _submit_in_fresh_process(tmp_path, env, "status"),
    }

    for name, run in runs.items():
        assert run["code"] == 0, (name, run["stderr"][-2000:])
        assert run["heavy"] == [], f"submit {name} imported {run['heavy'][:5]}"
    assert "status" in runs["help"]["stdout"] and "flowers-arch-opt" in runs["status"]["stdout"]


def _copy_package(destination: Path) -> Path:
    """The package's sources alone, so that pip builds in a temporary folder, never in the checkout."""
    destination.mkdir(parents=True)
    for name in PACKAGE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, destination / name)
    return destination


def _site_packages_mib(venv_dir: Path) -> float:
    (site,) = venv_dir.glob("lib/python*/site-packages")
    return sum(p.stat().st_size for p in site.rglob("*") if p.is_file()) / 2**20


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_pip_install_dot_is_the_submitter_without_tensorflow(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False, clear=True)
    bin_dir = env_dir / "bin"
    source = _copy_package(tmp_path / "src")
    install = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
                              str(source)], capture_output=True, text=True, timeout=1100)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "SPOTSWEEP_HOME": str(tmp_path / "home"), "SPOTSWEEP_BACKEND": "local"}

    def run(*command: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)

    assert run(bin_dir / "submit", "--help").returncode == 0
    assert run(bin_dir / "python", "-c", "import tensorflow").returncode != 0
    assert run(bin_dir / "python", "-c", "import keras").returncode != 0

    worker = run(bin_dir / "worker", "run", "--until-empty")
    assert worker.returncode == 1
    assert worker.stderr.strip().count("\n") == 0 and "spotsweep[worker]" in worker.stderr, worker.stderr

    image = tmp_path / "x.png"
    image.write_bytes(b"not read: the worker stops before")
    predict = run(bin_dir / "submit", "predict", "some-job", image)
    assert predict.returncode == 1
    assert predict.stderr.strip().count("\n") == 0 and "spotsweep[worker]" in predict.stderr, predict.stderr
    print(f"light install: site-packages {_site_packages_mib(env_dir):.0f} MiB")
