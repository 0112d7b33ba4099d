"""karaoke.song_scoring: a song scored in blocks gives the scores of the song held whole, and a long
song is scored in the memory of a short one."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from karaoke.bss_engine import EXPLICIT_ABOVE_DB
from karaoke.corpora import list_songs
from karaoke.estimators import DnnEstimator, IdealBinaryMask, song_probability
from karaoke.masks import masks_to_audio
from karaoke.metrics import score_alpha_grid
from karaoke.models.dnn import build_model
from karaoke.song_scoring import EXCERPT_SECONDS, score_song
from tests.conftest import REPO, small_config_dict


@pytest.mark.parametrize("method", ["ibm", "dnn"])
def test_blocks_give_the_scores_of_the_whole_song(small_config, method, torch_one_thread):
    """A synthetic song read from its stems in 1.3 s blocks against `score_alpha_grid` of the song
    loaded whole: every score, the framewise medians, the mixture's SDR and Figure 1's excerpt."""
    torch.manual_seed(0)
    estimator = IdealBinaryMask() if method == "ibm" else DnnEstimator(build_model(small_config).eval(), 20)
    grid = [("binary", (0.5,))] if method == "ibm" else [("binary", (0.3, 0.7)), ("soft", (0.5,))]
    song = list_songs(small_config.corpus, "test")[0]
    scores = score_song(song.audio(16000, "paper", block_seconds=1.3), estimator, small_config, grid, excerpt=True)

    whole = song.load(16000)
    features, probability = song_probability(estimator, whole, small_config)
    references = np.stack([whole.vocals, whole.accompaniment])
    expected = [
        row
        for mode, alphas in grid
        for row in score_alpha_grid(features.mixture_stft, probability, references, whole.mixture, alphas, small_config.stft, 16000, mode)
    ]
    assert scores.seconds == whole.seconds and len(scores.rows) == len(expected)
    for got, want in zip(scores.rows, expected):
        assert (got["mask"], got["alpha"]) == (want["mask"], want["alpha"])
        for key, value in want.items():
            if key in ("mask", "alpha"):
                continue
            if value > EXPLICIT_ABOVE_DB:  # rounding noise: only its order of magnitude is defined
                assert got[key] > EXPLICIT_ABOVE_DB, key
            else:
                # The overlap-add of the blocks rounds differently from the whole-song inverse STFT.
                assert got[key] == pytest.approx(value, abs=1e-4, nan_ok=True), key

    excerpt = scores.excerpt
    n = int(EXCERPT_SECONDS * 16000)
    energy = np.concatenate([[0.0], np.cumsum(whole.vocals.astype(np.float64) ** 2)])
    start = int(np.argmax(energy[n:] - energy[:-n]))
    assert excerpt["start_seconds"] * 16000 == start and excerpt["method"] == method
    np.testing.assert_array_equal(excerpt["vocals"], whole.vocals[start : start + n])
    np.testing.assert_array_equal(excerpt["mixture"], whole.mixture[start : start + n])
    vocals, _ = masks_to_audio(features.mixture_stft, probability, small_config.evaluation.alpha, small_config.stft, len(whole.mixture))
    np.testing.assert_allclose(excerpt["vocals_estimate"], vocals[start : start + n], atol=1e-5)


SCORE = """
import json, resource, sys
from karaoke.config import config_from_dict
from karaoke.corpora import list_songs
from karaoke.estimators import IdealBinaryMask
from karaoke.song_scoring import score_song
config = config_from_dict(json.loads(sys.argv[1]))
(song,) = list_songs(config.corpus, "test")
scores = score_song(song.audio(16000), IdealBinaryMask(), config, [("binary", (0.5,))])
print(json.dumps({"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": scores.seconds, "row": scores.rows[0]}))
"""


def _write_stems(folder, seconds: float, rate: int = 44100) -> None:
    """Vocals (a gliding harmonic tone sung in syllables) and an accompaniment (a chord and noise
    bursts), 44.1 kHz stereo float WAVs, written 10 s at a time."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with sf.SoundFile(folder / "vocals.wav", "w", rate, 2, subtype="FLOAT") as vocals, sf.SoundFile(
        folder / "accompaniment.wav", "w", rate, 2, subtype="FLOAT"
    ) as accompaniment:
        for start in range(0, int(seconds * rate), 10 * rate):
            t = (start + np.arange(min(10 * rate, int(seconds * rate) - start))) / rate
            f0 = 220 * 2 ** (np.round(4 * np.sin(2 * np.pi * 0.13 * t)) / 12)
            phase = 2 * np.pi * np.cumsum(f0) / rate
            voice = sum(np.sin(k * phase) / k for k in range(1, 6)) * (np.sin(2 * np.pi * 2.5 * t) > -0.3)
            chord = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (130.8, 164.8, 196.0))
            noise = 0.1 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 4 * t) > 0.6)
            vocals.write(np.stack([0.3 * voice, 0.2 * voice], axis=1))
            accompaniment.write(np.stack([chord + noise, chord - noise], axis=1))


def test_a_long_song_is_scored_in_the_memory_of_a_short_one(tmp_path):
    """Peak RSS of a process scoring a 3-minute 44.1 kHz stereo song against one scoring a 1-minute
    song (the IBM, whole-song and framewise BSS-EVAL). Held whole, the long song's two decoded stems
    alone would take 85 MiB more than the short one's (and per-window BSS-EVAL references 12 MiB a
    second); scored in blocks it takes no more than the allocator's noise."""
    results = {}
    for seconds in (60, 180):
        root = tmp_path / f"corpus_{seconds}"
        _write_stems(root / "test" / "song", seconds)
        config = small_config_dict(str(root), corpus={"layout": "stems", "sample_rate": 16000})
        done = subprocess.run(
            [sys.executable, "-c", SCORE, json.dumps(config)], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
        results[seconds] = json.loads(done.stdout.splitlines()[-1])
    short, long = results[60], results[180]
    assert long["seconds"] == 180 and short["seconds"] == 60
    assert np.isfinite([long["row"]["vocals_sdr"], long["row"]["accompaniment_sar_frames"]]).all()
    assert long["rss_mib"] - short["rss_mib"] < 40, results
