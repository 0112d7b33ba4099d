"""The command line as a user runs it: a child process, its exit status and its one-line errors."""

import subprocess
import sys


def karaoke(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "karaoke_cli", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_commands():
    result = karaoke("--help")
    assert result.returncode == 0
    for command in ("run", "synth", "check-config"):
        assert command in result.stdout


def test_bad_config_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epoch: 3}\n")
    result = karaoke("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {bad}: invalid config: train.epoch: unknown key"
    assert "Traceback" not in result.stderr


def test_non_finite_or_out_of_range_numbers_are_usage_errors(tmp_path):
    for flag, value in (("--chunk-seconds", "nan"), ("--chunk-seconds", "-1"), ("--alpha", "1")):
        result = karaoke("separate", str(tmp_path), "--model", str(tmp_path), "--out", str(tmp_path / "out"), flag, value)
        assert result.returncode == 2
        assert f"Invalid value for '{flag}': '{value}' is not a finite number" in result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
