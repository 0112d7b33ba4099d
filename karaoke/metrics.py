"""BSS-EVAL scores (SDR/SIR/SAR) of separated vocals and accompaniment, and their statistics.

- Whole-song scores (the paper: mir_eval's `bss_eval_sources` of the whole song, 512-tap filter) and
  framewise scores over 1 s windows, summarised by their median over windows (the SiSEC convention;
  silent windows are skipped), from the fast exact engine (`karaoke.bss_engine`,
  `karaoke.bss_frames`), which takes a song in blocks: the whole-song score of a song of any length
  is exact, in the memory of a block. `bss_eval_mir_eval` is the reference implementation it is
  tested against.
- A scores row is one separation of one song: `mask` ("binary": Eq. 2, or "soft"), `alpha`, `{source}_{metric}` (whole song, dB),
  `{source}_{metric}_frames` (median over 1 s windows) and `{source}_sdr_mixture` (SDR of the
  unprocessed mixture taken as the estimate, the baseline of NSDR), for source in SOURCES and
  metric in METRICS. Callers add `method`, `song_id`, `split` and `seconds`.
- GNSDR (MIR-1K, Hsu & Jang 2010): the mean over clips of NSDR = SDR(estimate) - SDR(mixture),
  weighted by clip length; GSIR and GSAR are the length-weighted means of SIR and SAR.
- 95% confidence intervals across songs are Student-t intervals of the mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from karaoke.config import StftConfig

SOURCES = ("vocals", "accompaniment")
METRICS = ("sdr", "sir", "sar")
SCORE_COLUMNS = tuple(f"{source}_{metric}" for source in SOURCES for metric in METRICS)
FRAME_SECONDS = 1.0


@dataclass(frozen=True)
class Scores:
    """Whole-song BSS-EVAL scores in dB, each of shape (2,): [vocals, accompaniment]."""

    sdr: np.ndarray
    sir: np.ndarray
    sar: np.ndarray

    def as_dict(self) -> dict[str, float]:
        return {
            f"{source}_{name}": float(getattr(self, name)[i]) for name in METRICS for i, source in enumerate(SOURCES)
        }


def bss_eval_mir_eval(references: np.ndarray, estimates: np.ndarray) -> Scores:
    """mir_eval's `bss_eval_sources` (whole signal, 512-tap distortion filter, no permutation).

    references, estimates: (2, n_samples) rows [vocals, accompaniment].
    """
    import warnings

    import mir_eval

    with warnings.catch_warnings():
        # Deprecated in mir_eval 0.8 in favour of museval's variant, but it is the paper's metric.
        warnings.simplefilter("ignore", FutureWarning)
        sdr, sir, sar, _ = mir_eval.separation.bss_eval_sources(references, estimates, compute_permutation=False)
    return Scores(sdr, sir, sar)


def framewise_median(values: np.ndarray) -> np.ndarray:
    """Median over the last axis (windows) ignoring NaN (silent windows); NaN if every window is."""
    values = np.asarray(values, dtype=np.float64)
    defined = ~np.isnan(values)
    out = np.full(values.shape[:-1], np.nan)
    has_any = defined.any(axis=-1)
    if has_any.any():
        out[has_any] = np.nanmedian(values[has_any], axis=-1)
    return out


# One block of a song being scored: references (2, m) [vocals, accompaniment], estimates (n, 2, m)
# (n separations, each [vocals, accompaniment]) and the mixture (m,).
ScoredBlock = tuple[np.ndarray, np.ndarray, np.ndarray]


def score_separations(blocks: Callable[[], Iterable[ScoredBlock]], sample_rate: int | None = None) -> list[dict[str, float]]:
    """One row per separation of a song whose audio comes in blocks (see `ScoredBlock`): the columns
    of the module docstring (framewise ones only with `sample_rate`).

    `blocks()` must give the same blocks at every call. It is read once, in the memory of a block
    (`karaoke.bss_engine.StreamingBss`, `karaoke.bss_frames.FramewiseBss`), and a second time only
    when a whole-song score needs BSS-EVAL's explicit path.
    """
    from karaoke.bss_engine import EXPLICIT_ABOVE_DB, StreamingBss
    from karaoke.bss_frames import FramewiseBss

    whole = StreamingBss(len(SOURCES))
    frames = None
    if sample_rate is not None:
        window = round(FRAME_SECONDS * sample_rate)
        frames = FramewiseBss(len(SOURCES), window, window)

    def with_mixture(references: np.ndarray, estimates: np.ndarray, mixture: np.ndarray) -> np.ndarray:
        # The unprocessed mixture, as the estimate of both sources, is the last separation scored whole.
        if references.shape != (len(SOURCES), np.shape(mixture)[-1]):
            raise ValueError(f"references {references.shape} must be (2, n_samples) like the mixture {np.shape(mixture)}")
        return np.concatenate([estimates, np.stack([mixture, mixture])[None]])

    n = None
    for references, estimates, mixture in blocks():
        n = len(estimates)
        whole.push(references, with_mixture(references, estimates, mixture))
        if frames is not None:
            frames.push(references, estimates)
    if n is None:
        raise ValueError("the song has no samples")
    sdr, sir, sar = whole.finish()
    # The mixture's SIR and SAR are not reported: only its SDR may need the explicit path.
    redo = whole.cancelled.copy()
    redo[n] &= ~(sdr[n] <= EXPLICIT_ABOVE_DB)
    indices = [tuple(int(i) for i in index) for index in zip(*np.nonzero(redo))]
    if indices:
        explicit = whole.explicit(indices)
        for references, estimates, mixture in blocks():
            explicit.push(references, with_mixture(references, estimates, mixture))
        for index, values in zip(indices, explicit.finish()):
            sdr[index], sir[index], sar[index] = values
    scores = np.stack([sdr, sir, sar], axis=-1)  # (n + 1, 2, 3)
    medians = framewise_median(np.stack(frames.finish(), axis=-2)) if frames is not None else None  # (n, 2, 3)
    rows = []
    for k in range(n):
        row = {}
        for i, source in enumerate(SOURCES):
            for m, metric in enumerate(METRICS):
                row[f"{source}_{metric}"] = float(scores[k, i, m])
                if medians is not None:
                    row[f"{source}_{metric}_frames"] = float(medians[k, i, m])
            row[f"{source}_sdr_mixture"] = float(scores[n, i, 0])
        rows.append(row)
    return rows


def score_alpha_grid(
    mixture_stft: np.ndarray,
    probability: np.ndarray,
    references: np.ndarray,
    mixture: np.ndarray,
    alphas: Sequence[float],
    stft_cfg: StftConfig,
    sample_rate: int | None = None,
    mode: str = "binary",
) -> list[dict[str, float]]:
    """Score one song held whole at every alpha of a grid (paper Eq. 2 masks, then BSS-EVAL).

    mixture_stft: (n_bins, n_frames) complex; probability: (n_bins, n_frames) vocal probability;
    references: (2, n_samples) [vocals, accompaniment]; mixture: (n_samples,). One row per alpha
    (`mask`, `alpha` and the columns of the module docstring; framewise ones only with `sample_rate`).
    `mode` is the mask mode of `karaoke.masks.alpha_masks` ("binary": Eq. 2). Every alpha's
    estimates are held at once (2 x n_alphas signals); a song of any length is scored in blocks by
    `karaoke.song_scoring`.
    """
    from karaoke.masks import masks_to_audio

    n_samples = len(mixture)
    estimates = np.stack(
        [np.stack(masks_to_audio(mixture_stft, probability, alpha, stft_cfg, n_samples, mode)) for alpha in alphas]
    )
    rows = score_separations(lambda: [(np.asarray(references), estimates, mixture)], sample_rate)
    return [{"mask": mode, "alpha": float(alpha), **row} for alpha, row in zip(alphas, rows)]


def confidence_interval(values: Iterable[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean of the finite values (NaN, inf dropped).

    With fewer than two values the interval is undefined: (mean, NaN, NaN) (all NaN for none).
    """
    from scipy import stats

    x = np.asarray(list(values), dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(np.mean(x))
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * np.std(x, ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def summarise(
    rows: Sequence[dict], by: Sequence[str] = ("method", "mask", "alpha"), level: float = 0.95
) -> list[dict]:
    """Mean and confidence interval across songs of every score, per group of `by` values.

    Adds `mean_{metric}` (the average of the two sources of a song, the paper's Fig. 2a) to the
    `{source}_{metric}` columns. Each output row: the `by` values, `n_songs`, and for every column c
    present `c`, `c_low`, `c_high`. Groups are sorted by their `by` values.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in by), []).append(row)
    out = []
    for key in sorted(groups):
        members = groups[key]
        summary = dict(zip(by, key), n_songs=len(members))
        columns = {c: [r.get(c, np.nan) for r in members] for c in SCORE_COLUMNS if c in members[0]}
        for metric in METRICS:
            if f"vocals_{metric}" in columns:
                columns[f"mean_{metric}"] = [
                    (r[f"vocals_{metric}"] + r[f"accompaniment_{metric}"]) / 2 for r in members
                ]
        for column, values in columns.items():
            summary[column], summary[f"{column}_low"], summary[f"{column}_high"] = confidence_interval(values, level)
        out.append(summary)
    return out


def global_scores(rows: Sequence[dict], weight: str = "seconds") -> dict[str, float]:
    """GNSDR, GSIR, GSAR per source over the rows of one method and alpha (one row per clip).

    Returns `{source}_gnsdr`, `{source}_gsir`, `{source}_gsar`: length-weighted means (weights from
    the `weight` column) of SDR - SDR(mixture), SIR and SAR; clips with an undefined score are left out.
    """
    out = {}
    for source in SOURCES:
        for name, values in (
            ("gnsdr", [r[f"{source}_sdr"] - r[f"{source}_sdr_mixture"] for r in rows]),
            ("gsir", [r[f"{source}_sir"] for r in rows]),
            ("gsar", [r[f"{source}_sar"] for r in rows]),
        ):
            values = np.asarray(values, dtype=np.float64)
            weights = np.asarray([r[weight] for r in rows], dtype=np.float64)
            keep = np.isfinite(values)
            total = weights[keep].sum()
            out[f"{source}_{name}"] = float(np.sum(values[keep] * weights[keep]) / total) if total > 0 else float("nan")
    return out
