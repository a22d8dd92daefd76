"""A study "file" that never ends is refused at the door, not read forever (issue 15 follow-up).

`submit study` reads at most one byte past the 1 MiB limit, so `/dev/zero` (or a multi-gigabyte
file given by mistake) gets the same one-line refusal as any oversized file: exit 2, nothing
written. Before, the whole file was read first and `/dev/zero` hung the command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.errors import BadInputError
from shared.study import MAX_STUDY_BYTES
from submitter.service import load_study_file

SUBMIT = Path(sys.executable).parent / "submit"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_dev_zero_is_refused_in_one_line_and_nothing_is_written(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "SPOTSWEEP_HOME": str(home), "SPOTSWEEP_BACKEND": "local"}
    result = subprocess.run([str(SUBMIT), "study", "/dev/zero"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: /dev/zero: larger than the limit of {MAX_STUDY_BYTES} bytes"]
    assert not home.exists()


def test_a_file_one_byte_over_the_limit_is_refused_and_one_at_the_limit_is_parsed(tmp_path):
    over = tmp_path / "over.json"
    over.write_bytes(b" " * (MAX_STUDY_BYTES + 1))
    with pytest.raises(BadInputError, match=f"larger than the limit of {MAX_STUDY_BYTES} bytes"):
        load_study_file(over)
    at_limit = tmp_path / "at-limit.json"
    at_limit.write_bytes(b" " * MAX_STUDY_BYTES)  # within the limit: on to the parser, which finds no JSON
    with pytest.raises(BadInputError, match="invalid JSON"):
        load_study_file(at_limit)
