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

from karaoke.config import StftConfig
from karaoke.spectral import istft


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


class WindowMean:
    """The mean value over the hop-1 windows of a spectrogram (zero-padded to one window if shorter),
    each frame counted once per window covering it: the mean of `sliding_windows(pad_frames(spec,
    T), T)`, from the spectrogram's per-frame sums over bins (float64), given in blocks of frames.
    Only the first 2T and the last T - 1 frame sums are kept: the others are covered T times."""

    def __init__(self, n_bins: int, window_frames: int) -> None:
        self.n_bins, self.window_frames = n_bins, window_frames
        self._head: list[float] = []  # the first 2T frame sums
        self._tail: list[float] = []  # the last T - 1
        self._total = 0.0
        self.n_frames = 0

    def push(self, column_sums: np.ndarray) -> None:
        """Frame sums (k,) of the next k frames."""
        values = [float(v) for v in column_sums]
        T = self.window_frames
        self._head += values[: max(2 * T - len(self._head), 0)]
        self._tail = (self._tail + values)[-(T - 1) :] if T > 1 else []
        self._total += float(np.sum(column_sums, dtype=np.float64))
        self.n_frames += len(values)

    def value(self) -> float:
        T, n = self.window_frames, self.n_frames
        n_windows = max(n - T + 1, 1)
        if n <= 2 * T:
            counts = np.convolve(np.ones(n_windows), np.ones(T))[:n]
            covered = float(np.dot(counts, self._head))
        else:
            # Frames t < T - 1 are in t + 1 windows, frame n - k (k < T) in k, the others in T.
            head = sum((T - 1 - t) * self._head[t] for t in range(T - 1))
            tail = sum((T - k) * self._tail[-k] for k in range(1, T))
            covered = T * self._total - head - tail
        return covered / (self.n_bins * T * n_windows)


def window_mean(column_sums: np.ndarray, n_bins: int, window_frames: int) -> float:
    """`WindowMean` of a whole spectrogram's per-frame sums over bins (n_frames,)."""
    mean = WindowMean(n_bins, window_frames)
    mean.push(column_sums)
    return mean.value()


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


def masks_to_audio(
    mixture_stft: np.ndarray,
    probability: np.ndarray,
    alpha: float,
    stft_cfg: StftConfig,
    n_samples: int,
    mode: MaskMode = "binary",
) -> tuple[np.ndarray, np.ndarray]:
    """Vocal and accompaniment audio (each (..., n_samples)) from a complex mixture STFT
    (..., n_bins, n_frames) and a vocal probability (n_bins, n_frames), thresholded at alpha (Eq. 2;
    `mode` as in `karaoke.masks.alpha_masks`).

    A stereo STFT (2, n_bins, n_frames) gets the same mono-derived mask on both channels.
    """
    vocal_mask, accompaniment_mask = alpha_masks(probability, alpha, mode)
    vocals = istft(apply_mask(mixture_stft, vocal_mask), stft_cfg, n_samples)
    accompaniment = istft(apply_mask(mixture_stft, accompaniment_mask), stft_cfg, n_samples)
    return vocals.astype(np.float32), accompaniment.astype(np.float32)
