"""From a vocal probability per time-frequency bin to separated audio (paper Eq. 2)."""

from __future__ import annotations

import numpy as np

from karaoke.config import StftConfig
from karaoke.masks import alpha_masks, apply_mask
from karaoke.spectral import istft


def masks_to_audio(
    mixture_stft: np.ndarray, probability: np.ndarray, alpha: float, stft_cfg: StftConfig, n_samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Vocal and accompaniment audio (each (..., n_samples)) from a complex mixture STFT
    (..., n_bins, n_frames) and a vocal probability (n_bins, n_frames), thresholded at alpha (Eq. 2).

    A stereo STFT (2, n_bins, n_frames) gets the same mono-derived mask on both channels.
    """
    vocal_mask, accompaniment_mask = alpha_masks(probability, alpha)
    vocals = istft(apply_mask(mixture_stft, vocal_mask), stft_cfg, n_samples)
    accompaniment = istft(apply_mask(mixture_stft, accompaniment_mask), stft_cfg, n_samples)
    return vocals.astype(np.float32), accompaniment.astype(np.float32)
