"""Masks and windows of the paper (Sec. 2, Eq. 1-2).

Dimension names: a spectrogram is (n_bins, n_frames); a window is (n_bins, window_frames), the
network's input being a window unpacked to n_bins * window_frames values (bin-major, as
`window.reshape(-1)` gives).

- Ideal binary mask: M(f, t) = 1 where |vocal(f, t)| > |accompaniment(f, t)|, else 0.
- Eq. 1: the network predicts a window from every hop-1 window position, so bin (f, t) receives
  up to `window_frames` predictions; their mean p(f, t) is its probability of being vocal.
- Eq. 2: vocal mask = p > alpha, accompaniment mask = p < 1 - alpha. Bins in between are in neither
  estimate, which trades artefacts (SAR) for interference (SIR) as alpha moves. The "soft" mask
  mode (`evaluation.mask`, beyond the paper) applies p and 1 - p themselves, ignoring alpha.
"""

from __future__ import annotations

from typing import Literal

import numpy as np


def ideal_binary_mask(vocal_magnitude: np.ndarray, accompaniment_magnitude: np.ndarray) -> np.ndarray:
    """IBM of two (n_bins, n_frames) magnitudes: True where the vocal is strictly louder."""
    if vocal_magnitude.shape != accompaniment_magnitude.shape:
        raise ValueError(
            f"vocal {vocal_magnitude.shape} and accompaniment {accompaniment_magnitude.shape} "
            "magnitudes differ in shape"
        )
    return vocal_magnitude > accompaniment_magnitude


def training_window_starts(n_frames: int, window_frames: int, train_hop: int) -> np.ndarray:
    """First frames of the training windows: 0, hop, 2*hop, ... while the window fits (may be empty)."""
    if n_frames < window_frames:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n_frames - window_frames + 1, train_hop, dtype=np.int64)


def training_windows(spec: np.ndarray, window_frames: int, train_hop: int) -> np.ndarray:
    """(n_bins, n_frames) -> (n_windows, n_bins, window_frames): windows every `train_hop` frames."""
    starts = training_window_starts(spec.shape[-1], window_frames, train_hop)
    if len(starts) == 0:
        return np.zeros((0, spec.shape[0], window_frames), dtype=spec.dtype)
    return sliding_windows(spec, window_frames)[starts]


def pad_frames(spec: np.ndarray, window_frames: int) -> np.ndarray:
    """Zero-pad (n_bins, n_frames) on the right to at least `window_frames` frames."""
    missing = window_frames - spec.shape[-1]
    return spec if missing <= 0 else np.pad(spec, [(0, 0)] * (spec.ndim - 1) + [(0, missing)])


def sliding_windows(spec: np.ndarray, window_frames: int) -> np.ndarray:
    """Hop-1 windows of (n_bins, n_frames): a read-only view of shape (n_frames - T + 1, n_bins, T)."""
    if spec.shape[-1] < window_frames:
        raise ValueError(f"{spec.shape[-1]} frames is fewer than one {window_frames}-frame window; pad first")
    view = np.lib.stride_tricks.sliding_window_view(spec, window_frames, axis=-1)
    return np.moveaxis(view, -2, 0)


def overlap_average(window_predictions: np.ndarray, n_frames: int | None = None) -> np.ndarray:
    """Eq. 1: mean over every prediction each bin received from hop-1 windows.

    window_predictions: (n_windows, n_bins, T), window i covering frames i .. i+T-1.
    Returns (n_bins, n_frames) with n_frames = n_windows + T - 1 (frames past that, if a larger
    `n_frames` is asked for, received no prediction and get 0). Edge frames average fewer values:
    frame 0 has one prediction, frame T-1 has T.
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


def check_alpha(alpha: float) -> float:
    """Alpha must lie strictly inside (0, 1): at 0 or 1 one of the masks is everything or nothing."""
    if not (isinstance(alpha, (int, float)) and 0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha!r}")
    return float(alpha)


MaskMode = Literal["binary", "soft"]


def alpha_masks(probability: np.ndarray, alpha: float, mode: MaskMode = "binary") -> tuple[np.ndarray, np.ndarray]:
    """Vocal and accompaniment masks of a (n_bins, n_frames) p (numpy or torch), each of p's shape.

    "binary" is Eq. 2: (p > alpha, p < 1 - alpha). "soft" (beyond the paper) applies the averaged
    probability itself, (p, 1 - p), whatever alpha (which is only validated): the two estimates then
    sum to the mixture, and a network that is unsure (p near 0.5) splits a bin instead of dropping it.
    """
    alpha = check_alpha(alpha)
    if mode == "binary":
        return probability > alpha, probability < 1.0 - alpha
    if mode == "soft":
        return probability * 1.0, 1.0 - probability
    raise ValueError(f"mask mode must be 'binary' or 'soft', got {mode!r}")


def apply_mask(mixture_stft: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked complex STFT: (..., n_bins, n_frames) complex times a binary or soft mask."""
    return mixture_stft * mask.astype(np.float32, copy=False)
