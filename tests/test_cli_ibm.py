import subprocess
import sys

import numpy as np

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
