import json
import subprocess
import sys

import numpy as np

from karaoke.audio import read_audio
from karaoke.corpora import list_songs
from karaoke.oracle import ibm_scores


def karaoke(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "karaoke.cli", *args], capture_output=True, text=True, cwd=cwd)


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


def test_ibm_separation_of_synthetic_songs_scores_high(small_config):
    song = list_songs(small_config.corpus, split="test")[0].load(16000)
    scores, vocals, accompaniment = ibm_scores(song, small_config)
    assert vocals.shape == accompaniment.shape == song.mixture.shape
    # The IBM is the oracle: far better than the mixture itself as a vocal estimate.
    assert scores.sdr[0] > 8.0 and scores.sir[0] > 12.0
    assert np.allclose(vocals + accompaniment, song.mixture, atol=1e-4)  # binary masks partition the mixture


def test_run_command_writes_ibm_outputs(tmp_path, synth_root):
    config = tmp_path / "c.yaml"
    config.write_text(
        "name: t\ncorpus: {layout: synth, root: %s, sample_rate: 16000, synth_songs: 5, synth_seconds: 6}\n"
        "stft: {n_fft: 512, hop_length: 128}\n" % synth_root
    )
    result = karaoke("run", "--config", str(config), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "vocal SDR" in result.stdout
    rows = json.loads((tmp_path / "run" / "ibm" / "scores.json").read_text())
    assert [r["song_id"] for r in rows] == ["synth_000_0004"]
    vocals, rate = read_audio(tmp_path / "run" / "ibm" / "synth_000_0004" / "vocals.wav")
    assert rate == 16000 and vocals.shape[1] == 6 * 16000
    assert (tmp_path / "run" / "config.yaml").is_file()
