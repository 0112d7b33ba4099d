"""The ideal binary mask as a separator: the upper bound the DNN and NMF are compared with."""

from __future__ import annotations

import numpy as np

from karaoke.config import ExperimentConfig
from karaoke.features import song_features
from karaoke.metrics import Scores, bss_eval_mir_eval
from karaoke.mixing import MixedSong
from karaoke.separate import masks_to_audio


def ibm_separate(song: MixedSong, config: ExperimentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Vocals and accompaniment (n_samples,) from the IBM applied to the mixture STFT.

    The IBM is 0 or 1, so every alpha in (0, 1) gives the same masks: vocal = IBM, accompaniment = not IBM.
    """
    features = song_features(song, config)
    probability = features.ibm.astype(np.float32)
    return masks_to_audio(features.mixture_stft, probability, 0.5, config.stft, len(song.mixture))


def ibm_scores(song: MixedSong, config: ExperimentConfig) -> tuple[Scores, np.ndarray, np.ndarray]:
    """BSS-EVAL of the IBM separation against the song's references (mir_eval)."""
    vocals, accompaniment = ibm_separate(song, config)
    scores = bss_eval_mir_eval(np.stack([song.vocals, song.accompaniment]), np.stack([vocals, accompaniment]))
    return scores, vocals, accompaniment
