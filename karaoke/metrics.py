"""BSS-EVAL scores (SDR/SIR/SAR) of separated vocals and accompaniment, and their statistics.

- Whole-song scores (the paper) and framewise scores over 1 s windows, summarised by their median
  over windows (the SiSEC convention; silent windows are skipped), from the fast exact engine
  (`karaoke.bss_engine`); `bss_eval_mir_eval` is the reference implementation it is tested against.
- A scores row is one separation of one song: `mask` ("binary": Eq. 2, or "soft"), `alpha`, `{source}_{metric}` (whole song, dB),
  `{source}_{metric}_frames` (median over 1 s windows) and `{source}_sdr_mixture` (SDR of the
  unprocessed mixture taken as the estimate, the baseline of NSDR), for source in SOURCES and
  metric in METRICS. Callers add `method`, `song_id`, `split` and `seconds`.
- GNSDR (MIR-1K, Hsu & Jang 2010): the mean over clips of NSDR = SDR(estimate) - SDR(mixture),
  weighted by clip length; GSIR and GSAR are the length-weighted means of SIR and SAR.
- 95% confidence intervals across songs are Student-t intervals of the mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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


class SongScorer:
    """Scores any number of separations of one song against its references.

    references: (2, n_samples) [vocals, accompaniment]; mixture: (n_samples,). The reference-only
    work (whole song, and per 1 s window when `sample_rate` is given) is done once here.
    """

    def __init__(self, references: np.ndarray, mixture: np.ndarray, sample_rate: int | None = None):
        from karaoke.bss_engine import FramewiseReferences, References

        references = np.asarray(references)
        if references.shape[0] != len(SOURCES) or references.shape[1:] != np.shape(mixture):
            raise ValueError(
                f"references {references.shape} must be (2, n_samples) like the mixture {np.shape(mixture)}"
            )
        self._whole = References(references)
        self._frames = None
        if sample_rate is not None:
            window = round(FRAME_SECONDS * sample_rate)
            self._frames = FramewiseReferences(references, window, window)
        self.mixture_sdr = self._whole.sdr(np.stack([mixture, mixture]))

    def score(self, estimates: np.ndarray) -> list[dict[str, float]]:
        """One row per separation of estimates (n_separations, 2, n_samples) (see the module docstring)."""
        whole = np.stack(self._whole.score(estimates), axis=-1)  # (n, 2, 3)
        frames = None
        if self._frames is not None:
            frames = framewise_median(np.stack(self._frames.score(estimates), axis=-2))  # (n, 2, 3)
        rows = []
        for k in range(len(estimates)):
            row = {}
            for i, source in enumerate(SOURCES):
                for m, metric in enumerate(METRICS):
                    row[f"{source}_{metric}"] = float(whole[k, i, m])
                    if frames is not None:
                        row[f"{source}_{metric}_frames"] = float(frames[k, i, m])
                row[f"{source}_sdr_mixture"] = float(self.mixture_sdr[i])
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
    """Score one song's soft mask at every alpha of a grid (paper Eq. 2 masks, then BSS-EVAL).

    mixture_stft: (n_bins, n_frames) complex; probability: (n_bins, n_frames) vocal probability;
    references: (2, n_samples) [vocals, accompaniment]; mixture: (n_samples,). One row per alpha
    (`mask`, `alpha` and the columns of the module docstring; framewise ones only with `sample_rate`).
    `mode` is the mask mode of `karaoke.masks.alpha_masks` ("binary": Eq. 2).
    """
    from karaoke.masks import masks_to_audio

    n_samples = len(mixture)
    scorer = SongScorer(references, mixture, sample_rate)
    rows = []
    # One alpha at a time: a whole sweep of a long song would hold gigabytes of estimates.
    for alpha in alphas:
        estimates = np.stack(masks_to_audio(mixture_stft, probability, alpha, stft_cfg, n_samples, mode))
        rows.append({"mask": mode, "alpha": float(alpha), **scorer.score(estimates[None])[0]})
    return rows


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
