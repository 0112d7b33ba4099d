"""Per-song features: the mixture STFT, unit-scale magnitudes of the mixture and both sources, the
IBM, and the training windows cut from them (what the preparation job stores as rows)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from karaoke.config import ExperimentConfig
from karaoke.masks import ideal_binary_mask, training_window_starts, training_windows
from karaoke.mixing import MixedSong
from karaoke.spectral import stft, unit_scale


@dataclass(frozen=True)
class SongFeatures:
    """All (n_bins, n_frames); magnitudes divided by `scale`, the mixture magnitude's maximum."""

    mixture_stft: np.ndarray  # complex64, not normalised: masks are applied to it
    mixture: np.ndarray  # float32 |mixture| / scale
    vocals: np.ndarray  # float32 |vocals| / scale
    accompaniment: np.ndarray  # float32 |accompaniment| / scale
    ibm: np.ndarray  # bool, vocals > accompaniment
    scale: float


def song_features(song: MixedSong, config: ExperimentConfig) -> SongFeatures:
    """STFT the mixture and references, normalise them by one per-song scale, and compute the IBM."""
    spectra = stft(np.stack([song.mixture, song.vocals, song.accompaniment]), config.stft)
    magnitudes = np.abs(spectra)
    scale = unit_scale(magnitudes[0])
    magnitudes /= scale
    return SongFeatures(
        mixture_stft=spectra[0],
        mixture=magnitudes[0],
        vocals=magnitudes[1],
        accompaniment=magnitudes[2],
        ibm=ideal_binary_mask(magnitudes[1], magnitudes[2]),
        scale=scale,
    )


def training_rows(features: SongFeatures, config: ExperimentConfig) -> dict[str, np.ndarray]:
    """Training windows of one song: T frames every `train_hop` frames.

    Returns `start_frame` (n_windows,) and `mixture`, `ibm`, `vocals`, `accompaniment`, each
    (n_windows, n_bins, T); n_windows = 0 for a song shorter than one window.
    """
    size, hop = config.windows.n_frames, config.windows.train_hop
    return {
        "start_frame": training_window_starts(features.mixture.shape[1], size, hop),
        "mixture": training_windows(features.mixture, size, hop),
        "ibm": training_windows(features.ibm, size, hop),
        "vocals": training_windows(features.vocals, size, hop),
        "accompaniment": training_windows(features.accompaniment, size, hop),
    }
