"""The mask-estimator protocol: every method of the paper (the DNN, the NMF baseline, the ideal
binary mask) is a `MaskEstimator` that gives the vocal probability p (n_bins, n_frames) of a song's
features as they stream by (`ProbabilityStream`: a song of any length in the memory of one block,
see `karaoke.song_scoring`), or of a song held whole (`song_probability`); Eq. 2
(`karaoke.masks.masks_to_audio`) turns p into audio at any alpha without asking it again.

Evaluation, tuning and the benchmarks get their estimator from `load_estimator(method, checkpoint,
config)`. Separating a user's audio files is `karaoke.Separator` (`karaoke.separator`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from karaoke.config import ExperimentConfig
from karaoke.features import SongFeatures, song_features
from karaoke.masks import ideal_binary_mask, masks_to_audio, window_mean
from karaoke.mixing import MixedSong

if TYPE_CHECKING:
    import torch

METHODS = ("ibm", "dnn", "nmf")


class ProbabilityStream(Protocol):
    """A song's vocal probability as its frames arrive: `push` unit-scale magnitudes (3, n_bins, k)
    [|mixture|, |vocals|, |accompaniment|] (divided by the song's unit scale) and get p (n_bins, m)
    float32 of the next m frames whose p is known; `finish` gives the rest."""

    def push(self, magnitudes: torch.Tensor) -> torch.Tensor: ...

    def finish(self) -> torch.Tensor: ...


class MaskEstimator(Protocol):
    """Anything that maps a song's features to its vocal probability p, (n_bins, n_frames) float32,
    frames in, p out (`ProbabilityStream`). `window_mean` is the song's mean unit-scale mixture
    magnitude over its hop-1 windows (`karaoke.masks.window_mean`), known before its first frame."""

    method: str

    def probability_stream(self, window_mean: float) -> ProbabilityStream: ...


class _MixtureStream:
    """A stream over the mixture magnitude alone (Eq. 1 of the DNN or the NMF)."""

    def __init__(self, average) -> None:
        self._average = average

    def push(self, magnitudes: torch.Tensor) -> torch.Tensor:
        return self._average.push(magnitudes[0])

    def finish(self) -> torch.Tensor:
        return self._average.finish()


class _IbmStream:
    def __init__(self) -> None:
        self._n_bins = 0

    def push(self, magnitudes: torch.Tensor) -> torch.Tensor:
        self._n_bins = magnitudes.shape[1]
        return ideal_binary_mask(magnitudes[1], magnitudes[2]).float()

    def finish(self) -> torch.Tensor:
        import torch

        return torch.zeros(self._n_bins, 0)


@dataclass(frozen=True)
class IdealBinaryMask:
    """The upper bound the DNN and NMF are compared with: p = IBM (needs the song's references), so
    every alpha in (0, 1) gives the same masks."""

    method: str = "ibm"

    def probability_stream(self, window_mean: float) -> ProbabilityStream:
        return _IbmStream()


@dataclass(frozen=True)
class DnnEstimator:
    """The mask DNN: p is Eq. 1, the mean of every hop-1 window's prediction covering a bin."""

    model: torch.nn.Module
    window_frames: int
    method: str = "dnn"

    def probability_stream(self, window_mean: float) -> ProbabilityStream:
        from karaoke.inference import StreamingSoftMask

        return _MixtureStream(StreamingSoftMask(self.model, self.window_frames, scale=1.0))


@dataclass(frozen=True)
class NmfEstimator:
    """The NMF baseline: per hop-1 window, the soft mask W_v H_v / (W_v H_v + W_nv H_nv) with the
    activations fitted for fixed bases, averaged over the windows covering a bin."""

    W_v: torch.Tensor  # (n_bins * window_frames, n_components)
    W_nv: torch.Tensor
    window_frames: int
    iterations: int
    seed: int
    tolerance: float = 0.0  # nmf.test_tolerance
    precision: str = "float32"  # nmf.test_precision
    method: str = "nmf"

    def probability_stream(self, window_mean: float) -> ProbabilityStream:
        from karaoke.models.nmf import DEFAULT_CHUNK_WINDOWS, nmf_probability_stream

        return _MixtureStream(
            nmf_probability_stream(
                self.W_v, self.W_nv, self.window_frames, self.iterations, self.seed, window_mean,
                DEFAULT_CHUNK_WINDOWS, self.tolerance, self.precision,
            )
        )


def load_estimator(method: str, checkpoint: str | None, config: ExperimentConfig, device: Any = "cpu") -> MaskEstimator:
    """The estimator of `method` ("ibm", "dnn", "nmf") from a checkpoint folder or URL (none for the
    IBM), verified against `config` (`karaoke.checkpoint`)."""
    from karaoke.storage import local_copy

    if method == "ibm":
        return IdealBinaryMask()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if checkpoint is None:
        raise ValueError(f"method {method!r} needs a checkpoint")
    with local_copy(checkpoint) as folder:
        if method == "dnn":
            from karaoke.models.dnn import load_dnn

            model, _, _ = load_dnn(folder, config, device=device)
            return DnnEstimator(model, config.windows.n_frames)
        from karaoke.models.nmf import load_bases

        W_v, W_nv, _ = load_bases(folder, config, device=device)
        nmf = config.nmf
        return NmfEstimator(
            W_v, W_nv, config.windows.n_frames, nmf.test_iterations, nmf.seed, nmf.test_tolerance, nmf.test_precision
        )


def song_probability(estimator: MaskEstimator, song: MixedSong, config: ExperimentConfig) -> tuple[SongFeatures, np.ndarray]:
    """(the song's features, its vocal probability p (n_bins, n_frames)) under `estimator`, every
    frame given to its stream at once."""
    import torch

    features = song_features(song, config)
    mean = window_mean(features.mixture.sum(0, dtype=np.float64), features.mixture.shape[0], config.windows.n_frames)
    stream = estimator.probability_stream(mean)
    magnitudes = torch.from_numpy(np.stack([features.mixture, features.vocals, features.accompaniment]))
    probability = torch.cat([stream.push(magnitudes), stream.finish()], -1)
    return features, probability.cpu().numpy()


def separate_song(
    estimator: MaskEstimator, song: MixedSong, config: ExperimentConfig, alpha: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Vocals and accompaniment (n_samples,) of a song: p from `estimator`, masks by Eq. 2 at `alpha`
    (default `evaluation.alpha`) in the mode `evaluation.mask`, applied to the mixture STFT."""
    features, probability = song_probability(estimator, song, config)
    alpha = config.evaluation.alpha if alpha is None else alpha
    return masks_to_audio(
        features.mixture_stft, probability, alpha, config.stft, len(song.mixture), config.evaluation.mask
    )
