"""STFT round trips, the IBM, training windows, Eq. 1 (the reference the fast paths are held to) and Eq. 2."""

import numpy as np
import pytest

from karaoke.config import StftConfig
from karaoke.masks import (
    alpha_masks,
    apply_mask,
    ideal_binary_mask,
    pad_frames,
    sliding_windows,
    training_window_starts,
    training_windows,
)
from karaoke.spectral import istft, stft, unit_scale
from tests.reference import n_frames_for, overlap_average


@pytest.mark.parametrize("n_fft, hop", [(2048, 512), (1024, 256), (512, 128)])
def test_stft_round_trip_below_1e6(n_fft, hop):
    cfg = StftConfig(n_fft=n_fft, hop_length=hop)
    audio = np.random.default_rng(0).uniform(-1, 1, 44100 + 123)
    spec = stft(audio, cfg)
    assert spec.shape == (n_fft // 2 + 1, n_frames_for(len(audio), cfg))
    back = istft(spec, cfg, len(audio))
    assert np.max(np.abs(back - audio)) < 1e-6


def test_stft_batches_leading_dimensions_and_float32_round_trip():
    cfg = StftConfig(n_fft=2048, hop_length=512)
    audio = np.random.default_rng(1).uniform(-1, 1, (2, 3, 10000)).astype(np.float32)
    spec = stft(audio, cfg)
    assert spec.shape == (2, 3, 1025, 1 + 10000 // 512)
    assert np.allclose(spec[1, 2], stft(audio[1, 2], cfg), atol=1e-5)
    assert np.max(np.abs(istft(spec, cfg, 10000) - audio)) < 1e-6


def test_ibm_matches_definition_on_random_spectra():
    rng = np.random.default_rng(2)
    vocal, accompaniment = rng.random((2, 1025, 50))
    accompaniment[0, :5] = vocal[0, :5]  # ties are not vocal
    mask = ideal_binary_mask(vocal, accompaniment)
    for f, t in [(0, 0), (3, 7), (1024, 49), (500, 25)]:
        assert mask[f, t] == (vocal[f, t] > accompaniment[f, t])
    assert not mask[0, :5].any()
    assert mask.mean() == pytest.approx((vocal > accompaniment).mean())
    with pytest.raises(ValueError, match="differ in shape"):
        ideal_binary_mask(vocal, accompaniment[:, :10])


def test_training_windows_every_60_frames():
    spec = np.arange(3 * 150, dtype=np.float32).reshape(3, 150)
    starts = training_window_starts(150, 20, 60)
    assert starts.tolist() == [0, 60, 120]
    windows = training_windows(spec, 20, 60)
    assert windows.shape == (3, 3, 20)
    assert np.array_equal(windows[2], spec[:, 120:140])
    assert training_windows(spec[:, :19], 20, 60).shape == (0, 3, 20)


def test_eq1_hand_worked_example_with_edge_frames():
    # 2 bins, window of T=3 frames, 3 hop-1 windows -> 5 frames.
    predictions = np.array(
        [
            [[1.0, 0.0, 0.5], [0.2, 0.2, 0.2]],  # window 0: frames 0,1,2
            [[1.0, 1.0, 0.0], [0.4, 0.4, 0.4]],  # window 1: frames 1,2,3
            [[0.0, 1.0, 1.0], [0.6, 0.6, 0.6]],  # window 2: frames 2,3,4
        ]
    )
    mean = overlap_average(predictions)
    # bin 0: frame0 = 1 (one prediction); frame1 = (0+1)/2; frame2 = (0.5+1+0)/3; frame3 = (0+1)/2; frame4 = 1
    assert np.allclose(mean[0], [1.0, 0.5, 0.5, 0.5, 1.0])
    assert np.allclose(mean[1], [0.2, 0.3, 0.4, 0.5, 0.6])
    vocal, accompaniment = alpha_masks(mean, 0.45)
    assert vocal[0].tolist() == [True, True, True, True, True]
    assert accompaniment[1].tolist() == [True, True, True, True, False]  # p < 0.55
    # Frames beyond the covered ones got no prediction: 0, not NaN.
    assert np.array_equal(overlap_average(predictions, n_frames=7)[:, 5:], np.zeros((2, 2)))


def test_overlap_average_of_sliding_windows_is_identity():
    spec = np.random.default_rng(3).random((7, 40)).astype(np.float32)
    windows = sliding_windows(spec, 20)
    assert windows.shape == (21, 7, 20)
    assert np.allclose(overlap_average(windows), spec, atol=1e-6)
    assert pad_frames(spec[:, :5], 20).shape == (7, 20)
    with pytest.raises(ValueError, match="pad first"):
        sliding_windows(spec[:, :5], 20)


def test_vocal_mask_shrinks_as_alpha_grows():
    probability = np.random.default_rng(4).random((100, 100))
    vocal_sizes, accompaniment_sizes = [], []
    for alpha in np.linspace(0.05, 0.95, 19):
        vocal, accompaniment = alpha_masks(probability, alpha)
        vocal_sizes.append(vocal.sum())
        accompaniment_sizes.append(accompaniment.sum())
        assert not (vocal & accompaniment).any() or alpha < 0.5
    assert all(a > b for a, b in zip(vocal_sizes, vocal_sizes[1:]))
    assert all(a > b for a, b in zip(accompaniment_sizes, accompaniment_sizes[1:]))


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan"), "0.5"])
def test_alpha_outside_open_interval_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha must be strictly between 0 and 1"):
        alpha_masks(np.zeros((2, 2)), alpha)


def test_apply_mask_and_unit_scale():
    spec = np.array([[1 + 1j, 2j], [3, -4]], dtype=np.complex64)
    mask = np.array([[True, False], [False, True]])
    assert np.array_equal(apply_mask(spec, mask), np.array([[1 + 1j, 0], [0, -4]], dtype=np.complex64))
    assert unit_scale(np.abs(spec)) == 4.0
    assert unit_scale(np.zeros((3, 3))) == 1.0


def test_window_mean_of_frames_in_blocks_is_the_mean_over_the_padded_windows():
    from karaoke.masks import WindowMean, window_mean

    rng = np.random.default_rng(0)
    for n_frames in (1, 19, 20, 21, 40, 41, 300):
        for window_frames in (1, 3, 20):
            spec = rng.random((7, n_frames))
            expected = sliding_windows(pad_frames(spec, window_frames), window_frames).mean()
            mean = WindowMean(7, window_frames)
            for start in range(0, n_frames, 4):
                mean.push(spec[:, start : start + 4].sum(0))
            assert mean.value() == pytest.approx(expected, rel=1e-12)
            assert window_mean(spec.sum(0), 7, window_frames) == pytest.approx(expected, rel=1e-12)
