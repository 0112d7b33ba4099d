"""Slow, obvious reference implementations the tests hold the library's fast paths against."""

from __future__ import annotations

import numpy as np


def overlap_average(window_predictions: np.ndarray, n_frames: int | None = None) -> np.ndarray:
    """Eq. 1 the slow way: mean over every prediction each bin received from hop-1 windows.

    window_predictions: (n_windows, n_bins, T), window i covering frames i .. i+T-1.
    Returns (n_bins, n_frames) with n_frames = n_windows + T - 1 (frames past that, if a larger
    `n_frames` is asked for, received no prediction and get 0).
    """
    n_windows, n_bins, window_frames = window_predictions.shape
    covered = n_windows + window_frames - 1
    n_frames = covered if n_frames is None else n_frames
    total = np.zeros((n_bins, max(n_frames, covered)), dtype=np.float64)
    count = np.zeros(max(n_frames, covered), dtype=np.float64)
    for offset in range(window_frames):
        total[:, offset : offset + n_windows] += window_predictions[:, :, offset].T
        count[offset : offset + n_windows] += 1
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return mean[:, :n_frames].astype(np.float32)


def n_frames_for(n_samples: int, stft_cfg) -> int:
    """Number of centred STFT frames of a signal of `n_samples` samples."""
    return 1 + n_samples // stft_cfg.hop_length
