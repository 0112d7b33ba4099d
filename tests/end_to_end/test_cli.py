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


def test_a_truncated_file_is_refused_by_separate_naming_it_and_leaving_nothing(small_config, tmp_path):
    import numpy as np
    import soundfile as sf

    from karaoke.models.dnn import build_model, save_dnn

    save_dnn(tmp_path / "model", build_model(small_config), small_config, 1, {"train_loss": 0.5})
    song = tmp_path / "song.wav"
    sf.write(song, np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 3).astype(np.float32), 16000, subtype="FLOAT")
    song.write_bytes(song.read_bytes()[: song.stat().st_size // 2])  # a copy cut off half-way
    out = tmp_path / "out"
    result = karaoke("separate", str(song), "--model", str(tmp_path / "model"), "--out", str(out))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-2].startswith(f"failed: {song}: truncated audio: the header promises")
    assert lines[-1] == f"separated 0 of 1 file into {out / 'test-model'}; 1 failed (listed above)"
    assert "Traceback" not in result.stderr
    assert not out.exists()  # no empty folder left looking like a result


def test_an_output_path_blocked_by_a_file_and_a_card_from_another_model_are_one_line_errors(small_config, tmp_path):
    import json

    import numpy as np
    import soundfile as sf

    from karaoke.models.dnn import build_model, save_dnn

    save_dnn(tmp_path / "model", build_model(small_config), small_config, 1, {"train_loss": 0.5})
    song = tmp_path / "song.wav"
    sf.write(song, np.zeros(16000, np.float32), 16000)
    (tmp_path / "out" / "test-model").mkdir(parents=True)
    (tmp_path / "out" / "test-model" / "song").write_text("a file where the song's folder goes")
    result = karaoke("separate", str(song), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-2] == (
        f"failed: {tmp_path / 'out' / 'test-model' / 'song'}: cannot write the separation there (File exists); choose another --out"
    )
    result = karaoke("separate", str(song), "--model", str(tmp_path / "model"), "--out", str(song / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-2].startswith(f"failed: {song / 'out' / 'test-model' / 'song'}: cannot write the separation there")

    card_path = tmp_path / "model" / "checkpoint.json"
    card = json.loads(card_path.read_text())
    card["config"]["dnn"]["hidden_sizes"] = [32]  # the card of another network beside these weights
    card_path.write_text(json.dumps(card))
    result = karaoke("separate", str(song), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out2"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: {tmp_path / 'model'}: its weights do not fit the network its checkpoint.json describes"
    )
