"""The CI scripts themselves: valid bash, shellcheck-clean, executable entry point."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import tfmodel

RUN_SH = tfmodel.REPO / "ci" / "infra" / "run.sh"


def test_run_sh_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(RUN_SH)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_run_sh_passes_shellcheck():
    result = subprocess.run(["shellcheck", "--severity=warning", str(RUN_SH)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_requirements_are_pinned():
    for name in ("requirements-hcl.txt", "requirements-checkov.txt"):
        lines = [
            line.strip()
            for line in (tfmodel.REPO / "ci" / "infra" / name).read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert lines, name
        assert all("==" in line for line in lines), name
