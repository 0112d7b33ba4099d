"""STFT / inverse STFT (Hann window, centred frames) and the per-song unit-scale normalisation.

Shapes: audio (..., n_samples) -> spectrogram (..., n_bins, n_frames) with
n_bins = n_fft // 2 + 1 and n_frames = 1 + n_samples // hop_length. Functions take NumPy arrays or
torch tensors and return the same kind, so the GPU inference path uses them unchanged.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from karaoke.config import StftConfig

Array = TypeVar("Array")


def _to_tensor(x):
    import torch

    return (x, False) if isinstance(x, torch.Tensor) else (torch.from_numpy(np.ascontiguousarray(x)), True)


def stft(audio: Array, stft_cfg: StftConfig) -> Array:
    """Complex STFT of (..., n_samples) real audio -> (..., n_bins, n_frames) complex."""
    import torch

    x, was_numpy = _to_tensor(audio)
    lead = x.shape[:-1]
    window = torch.hann_window(stft_cfg.n_fft, dtype=x.dtype, device=x.device)
    spec = torch.stft(
        x.reshape(-1, x.shape[-1]),
        n_fft=stft_cfg.n_fft,
        hop_length=stft_cfg.hop_length,
        window=window,
        center=True,
        return_complex=True,
    )
    spec = spec.reshape(*lead, *spec.shape[-2:])
    return spec.numpy() if was_numpy else spec


def istft(spec: Array, stft_cfg: StftConfig, n_samples: int) -> Array:
    """Inverse of `stft`: (..., n_bins, n_frames) complex -> (..., n_samples) real."""
    import torch

    z, was_numpy = _to_tensor(spec)
    lead = z.shape[:-2]
    real_dtype = torch.float64 if z.dtype == torch.complex128 else torch.float32
    window = torch.hann_window(stft_cfg.n_fft, dtype=real_dtype, device=z.device)
    audio = torch.istft(
        z.reshape(-1, *z.shape[-2:]),
        n_fft=stft_cfg.n_fft,
        hop_length=stft_cfg.hop_length,
        window=window,
        center=True,
        length=n_samples,
    )
    audio = audio.reshape(*lead, n_samples)
    return audio.numpy() if was_numpy else audio


def unit_scale(magnitude: np.ndarray) -> float:
    """The per-song scale that maps the mixture magnitude's maximum to 1 (1.0 for silence).

    The authors normalise each song's spectrogram to unit scale so that the network sees inputs of
    the same range whatever the recording level; the same scale is applied to the song's vocal and
    accompaniment magnitudes so that their ratio (the IBM) is unchanged.
    """
    peak = float(np.max(magnitude)) if magnitude.size else 0.0
    return peak if peak > 1e-12 else 1.0
