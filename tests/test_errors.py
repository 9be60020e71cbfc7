"""User errors end `python -m monai.bundle run` with one `error:` line and no traceback (scripts/core/errors.py)."""

import os
import subprocess
import sys

import pytest

from conftest import BUNDLE_ROOT
from scripts.core.errors import find_user_error, one_line


def bundle_run(run_id, config, *args, env=None, cwd=None):
    configs = [os.path.join(BUNDLE_ROOT, "configs", name) for name in config.split("+")]
    config_file = configs[0] if len(configs) == 1 else str(configs)
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config_file, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, **(env or {})})


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("run_id, config, args, expected", [
    ("training", "train.json", ["--datalist", "{tmp}/missing.json"], "error: {tmp}/missing.json: datalist file not found."),
    ("training", "train.json", ["--patch_size", "66"], "error: patch_size=66: expected an integer >= 64"),
    ("inference", "inference.json", ["--input_path", "{tmp}/nothing", "--output_dir", "{tmp}/out"],
     "error: {tmp}/nothing: no such file or directory"),
    ("evaluating", "train.json+evaluate.json", ["--datalist", "{tmp}/missing.json", "--output_dir", "{tmp}/report"],
     "error: {tmp}/missing.json: datalist file not found."),
])
def test_user_error_is_one_line_without_traceback(tmp_path, run_id, config, args, expected):
    result = bundle_run(run_id, config, *[a.format(tmp=tmp_path) for a in args], cwd=str(tmp_path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith(expected.format(tmp=tmp_path)), result.stderr
    assert sorted(os.listdir(tmp_path)) == []  # nothing written


def test_debug_switch_keeps_the_traceback(tmp_path):
    result = bundle_run("training", "train.json", "--patch_size", "66", env={"ISCL_DEBUG": "1"}, cwd=str(tmp_path))
    assert result.returncode != 0 and "Traceback" in result.stderr and "patch_size=66" in result.stderr


def test_the_outermost_user_error_of_a_wrapped_chain_is_reported():
    try:
        try:
            try:
                raise ValueError("Expecting value: line 1 column 1")
            except ValueError as low:
                raise ValueError("d.json: datalist file is not valid JSON") from low
        except ValueError as ours:
            raise RuntimeError("Failed to evaluate ConfigExpression") from ours
    except RuntimeError as wrapped:
        assert one_line(find_user_error(wrapped)) == "error: d.json: datalist file is not valid JSON"
    assert find_user_error(RuntimeError("a bug")) is None
    assert one_line(OSError(28, "No space left on device")) == "error: [Errno 28] No space left on device"
