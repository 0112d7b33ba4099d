"""The mask-estimator protocol (karaoke.estimators): one way from a checkpoint to a song's vocal probability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from karaoke.corpora import list_songs
from karaoke.estimators import (
    IdealBinaryMask,
    load_estimator,
    separate_song,
    song_probability,
)
from karaoke.features import song_features
from karaoke.inference import soft_mask
from karaoke.metrics import bss_eval_mir_eval
from karaoke.models.dnn import build_model, save_dnn
from karaoke.models.nmf import nmf_vocal_probability, save_bases


@pytest.fixture(scope="module")
def song(small_config):
    return list_songs(small_config.corpus, split="test")[0].load(16000)


def test_ibm_separation_of_synthetic_songs_scores_high(small_config, song):
    vocals, accompaniment = separate_song(IdealBinaryMask(), song, small_config, 0.5)
    scores = bss_eval_mir_eval(np.stack([song.vocals, song.accompaniment]), np.stack([vocals, accompaniment]))
    assert vocals.shape == accompaniment.shape == song.mixture.shape
    # The IBM is the oracle: far better than the mixture itself as a vocal estimate.
    assert scores.sdr[0] > 8.0 and scores.sir[0] > 12.0
    assert np.allclose(vocals + accompaniment, song.mixture, atol=1e-4)  # binary masks partition the mixture


def test_loaded_checkpoints_give_the_models_own_probabilities(small_config, song, tmp_path):
    torch.manual_seed(0)
    model = build_model(small_config).eval()
    save_dnn(tmp_path / "dnn", model, small_config, 1, {"train_loss": 0.5})
    W = torch.rand(2, small_config.n_inputs, 4) + 0.1
    save_bases(tmp_path / "nmf", W, small_config, iteration=1)
    features = song_features(song, small_config)
    n_frames, nmf = small_config.windows.n_frames, small_config.nmf

    dnn = load_estimator("dnn", str(tmp_path / "dnn"), small_config)
    _, probability = song_probability(dnn, song, small_config)
    np.testing.assert_allclose(probability, soft_mask(model, features.mixture, n_frames, scale=1.0), atol=1e-6)

    nmf_estimator = load_estimator("nmf", str(tmp_path / "nmf"), small_config)
    expected = nmf_vocal_probability(features.mixture, W[0], W[1], n_frames, nmf.test_iterations, nmf.seed)
    np.testing.assert_allclose(song_probability(nmf_estimator, song, small_config)[1], expected, atol=1e-6)
    assert probability.shape == expected.shape == features.mixture.shape


def test_unknown_method_and_missing_checkpoint_are_refused(small_config):
    with pytest.raises(ValueError, match="unknown method 'wiener'"):
        load_estimator("wiener", None, small_config)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        load_estimator("dnn", None, small_config)
