"""Scoring one song of any length in bounded memory: an estimator's vocal probability, the masks
of Eq. 2 at every alpha and BSS-EVAL, all in blocks of the song's audio.

A song (`karaoke.mixing.SongAudio`: blocks of mixture, vocals and accompaniment, mixed from its
stems by `karaoke.corpora.Song.audio` or cut from a song held whole) is read in passes:
1. `song_statistics`: its length, its unit scale (the maximum of the mixture STFT's magnitude,
   which every magnitude is divided by before an estimator sees it), the mean of the unit-scale
   mixture over its hop-1 windows (the NMF's initial scale), and where its vocals are loudest over
   `EXCERPT_SECONDS` (Figure 1).
2. `separations`: STFT frames of the three signals (`karaoke.streaming.Framer`), the estimator's p as
   its frames finish (`karaoke.estimators.ProbabilityStream`), every (mask mode, alpha) applied to
   the mixture's frames and overlap-added (`karaoke.streaming.OverlapAdd`), each block of estimates
   leaving with the reference samples it lines up with, into `karaoke.metrics.score_separations`
   (which reads the song a third time only when BSS-EVAL's explicit path is needed).
The rows equal those of `karaoke.metrics.score_alpha_grid` of the song held whole, to float
rounding. What is held is a block of audio with its frames and estimates, T - 1 frames of the
estimator, one BSS-EVAL window, and per song six numbers per estimate and 1 s window (about 8 MB
for an hour scored at 10 alphas).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from karaoke.config import ExperimentConfig
from karaoke.estimators import MaskEstimator
from karaoke.masks import WindowMean, alpha_masks
from karaoke.metrics import ScoredBlock, score_separations
from karaoke.mixing import SongAudio
from karaoke.spectral import unit_scale
from karaoke.streaming import Framer, OverlapAdd

EXCERPT_SECONDS = 1.5
CPU = torch.device("cpu")


@dataclass(frozen=True)
class SongStatistics:
    n_samples: int
    scale: float  # the unit scale: max |mixture STFT|
    window_mean: float  # mean unit-scale |mixture STFT| over the hop-1 windows
    excerpt_start: int  # first sample of the loudest EXCERPT_SECONDS of the vocals


class _LoudestSpan:
    """Start of the first `n`-sample span of largest energy of a signal given in blocks (0 for a
    signal of at most n samples): the argmax of the whole signal's cumulative energy differences."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._energies = np.zeros(1)  # cumulative energies E[first ..], E[0] = 0
        self._first = 0
        self.best, self.start = -np.inf, 0

    def push(self, x: np.ndarray) -> None:
        # Accumulated from the previous total, in order: the same sums as one cumsum of the whole signal.
        cumulative = np.cumsum(np.concatenate([self._energies[-1:], np.asarray(x, dtype=np.float64) ** 2]))[1:]
        energies = np.concatenate([self._energies, cumulative])
        if len(energies) > self.n:
            spans = energies[self.n :] - energies[: len(energies) - self.n]
            k = int(np.argmax(spans))
            if spans[k] > self.best:
                self.best, self.start = float(spans[k]), self._first + k
            self._first += spans.size
            energies = energies[spans.size :]
        self._energies = energies


def song_statistics(audio: SongAudio, config: ExperimentConfig) -> SongStatistics:
    """The first pass over a song (see the module docstring)."""
    framer = Framer(config.stft, CPU)
    loudest = _LoudestSpan(int(EXCERPT_SECONDS * audio.sample_rate))
    mean = WindowMean(config.stft.n_bins, config.windows.n_frames)
    peak, n_samples = 0.0, 0

    def add(spec: torch.Tensor | None) -> None:
        nonlocal peak
        if spec is not None and spec.shape[-1]:
            magnitude = np.abs(spec[0].numpy())
            peak = max(peak, float(magnitude.max()))
            mean.push(magnitude.sum(0, dtype=np.float64))

    for block in audio.blocks():
        n_samples += block.shape[-1]
        add(framer.push(block[:1]))
        loudest.push(block[1])
    add(framer.finish(audio.song_id))
    scale = unit_scale(np.array([peak]))
    # The mean is linear in the magnitudes: that of the raw ones over the scale.
    return SongStatistics(n_samples, scale, mean.value() / scale, loudest.start)


def separations(
    audio: SongAudio,
    estimator: MaskEstimator,
    statistics: SongStatistics,
    config: ExperimentConfig,
    streams: Sequence[tuple[str, float]],
) -> Iterator[ScoredBlock]:
    """The second pass: blocks (references (2, m), estimates (len(streams), 2, m), mixture (m,)) of
    the song separated with every (mask mode, alpha) of `streams` (`karaoke.masks.alpha_masks`)."""
    framer = Framer(config.stft, CPU)
    probability = estimator.probability_stream(statistics.window_mean)
    overlap = [OverlapAdd(config.stft, 2, CPU) for _ in streams]
    waiting: list[torch.Tensor] = []  # mixture frames (n_bins, k) whose p is not known yet
    pending: list[np.ndarray] = []  # input samples (3, m) not yet matched by estimates

    def frames(spec: torch.Tensor | None) -> torch.Tensor:
        if spec is None or not spec.shape[-1]:
            return torch.zeros(config.stft.n_bins, 0)
        waiting.append(spec[0])
        return probability.push(torch.from_numpy(np.abs(spec.numpy()) / statistics.scale))

    def estimates(p: torch.Tensor) -> np.ndarray | None:
        n = p.shape[-1]
        if n == 0:
            return None
        mixture = torch.cat(waiting, -1)
        waiting[:] = [mixture[:, n:]]
        ready = mixture[:, :n]
        out = []
        for (mode, alpha), ola in zip(streams, overlap):
            vocal, accompaniment = alpha_masks(p, alpha, mode)
            out.append(ola.push(torch.stack([ready * vocal.to(torch.float32), ready * accompaniment.to(torch.float32)])))
        return torch.stack(out).numpy()

    def matched(estimated: np.ndarray | None) -> ScoredBlock | None:
        if estimated is None or not estimated.shape[-1]:
            return None
        samples = np.concatenate(pending, axis=-1)
        q = estimated.shape[-1]
        pending[:] = [samples[:, q:]]
        return samples[1:, :q], estimated, samples[0, :q]

    for block in audio.blocks():
        pending.append(block)
        if (out := matched(estimates(frames(framer.push(block))))) is not None:
            yield out
    for p in (frames(framer.finish(audio.song_id)), probability.finish()):
        if (out := matched(estimates(p))) is not None:
            yield out
    final = np.stack([ola.finish(statistics.n_samples).numpy() for ola in overlap])
    if (out := matched(final)) is not None:
        yield out


class _Excerpt:
    """Collects samples [start, start + n) of blocks passing by (Figure 1's data)."""

    def __init__(self, start: int, n: int) -> None:
        self.start, self.n, self.position = start, n, 0
        self.parts: list[np.ndarray] = []

    def add(self, block: np.ndarray) -> None:
        m = block.shape[-1]
        lo, hi = max(self.start - self.position, 0), min(self.start + self.n - self.position, m)
        if lo < hi:
            self.parts.append(block[..., lo:hi])
        self.position += m

    def samples(self) -> np.ndarray:
        return np.concatenate(self.parts, axis=-1)


@dataclass(frozen=True)
class SongScores:
    """The scores of one song under one estimator (see `score_song`)."""

    rows: list[dict[str, Any]]
    seconds: float
    excerpt: dict[str, Any] | None


def score_song(
    audio: SongAudio,
    estimator: MaskEstimator,
    config: ExperimentConfig,
    grid: Sequence[tuple[str, Sequence[float]]],
    excerpt: bool = False,
) -> SongScores:
    """Scores rows of a song under one estimator at every (mask mode, alphas) of `grid`, in the
    order of the grid (`mask`, `alpha` and the columns of `karaoke.metrics`, framewise ones
    included), the song's length, and with `excerpt` Figure 1's data: `EXCERPT_SECONDS` where the
    vocals are loudest, the sources and the estimates of binary masks (Eq. 2) at `evaluation.alpha`
    (the paper's figure)."""
    statistics = song_statistics(audio, config)
    streams = [(mode, float(alpha)) for mode, alphas in grid for alpha in alphas]
    n_scored = len(streams)
    pictured = ("binary", float(config.evaluation.alpha))
    if excerpt and pictured not in streams:
        streams.append(pictured)
    n = min(statistics.n_samples, int(EXCERPT_SECONDS * audio.sample_rate))
    capture = _Excerpt(statistics.excerpt_start, n) if excerpt else None

    def blocks() -> Iterator[ScoredBlock]:
        for references, estimates, mixture in separations(audio, estimator, statistics, config, streams):
            if capture is not None and capture.position < statistics.n_samples:  # not again on a replay
                picked = estimates[streams.index(pictured)]
                capture.add(np.concatenate([mixture[None], references, picked]))
            yield references, estimates[:n_scored], mixture

    rows = [{"mask": mode, "alpha": alpha, **row} for (mode, alpha), row in zip(streams, score_separations(blocks, audio.sample_rate))]
    seconds = statistics.n_samples / audio.sample_rate
    if capture is None:
        return SongScores(rows, seconds, None)
    mixture, vocals, accompaniment, vocals_estimate, accompaniment_estimate = capture.samples()
    arrays = {
        "mixture": mixture,
        "vocals": vocals,
        "accompaniment": accompaniment,
        "vocals_estimate": vocals_estimate,
        "accompaniment_estimate": accompaniment_estimate,
        "sample_rate": audio.sample_rate,
        "n_fft": config.stft.n_fft,
        "hop_length": config.stft.hop_length,
        "song_id": audio.song_id,
        "start_seconds": statistics.excerpt_start / audio.sample_rate,
        "method": estimator.method,
        "alpha": config.evaluation.alpha,
    }
    return SongScores(rows, seconds, arrays)
