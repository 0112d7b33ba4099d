"""The paper's three figures from a scores summary (`karaoke.metrics.summarise` rows: `method`,
`mask`, `alpha`, `n_songs` and each `{panel}_{metric}` with `_low`/`_high` 95% bounds), and Figure
3's comparison as one number.

- Figure 1: log-magnitude spectrograms of an excerpt (sources, mixture, estimates), log-frequency.
- Figure 2: SDR, SIR and SAR against alpha, binary masks (Eq. 2), panels a/b/c = mean of the two
  sources, vocals, accompaniment; soft-mask scores are drawn as marked points, not as curves.
- Figure 3: SAR against SIR for 0.1 < alpha < 0.9, DNN vs NMF, each panel titled with
  `sar_gap_at_equal_sir`, the paper's claim in one number.

Each `figure_*` returns a matplotlib `Figure` (no pyplot state), so what it shows can be read back
from its axes; `save_figure` writes one through the atomic writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from karaoke.metrics import METRICS
from karaoke.storage import write_file

PANELS = (
    ("mean", "a: mean of vocals and accompaniment"),
    ("vocals", "b: vocals"),
    ("accompaniment", "c: accompaniment"),
)
STYLE = {"dnn": ("C0", "-", "DNN"), "nmf": ("C1", "-", "NMF"), "ibm": ("C2", "--", "IBM")}
# Figure 3 of the paper: the DNN's SAR above the NMF's at equal SIR, read off its panels.
PAPER_SAR_GAP = {"mean": "~3 dB", "vocals": "~5 dB"}
DPI = 100
_EPS = 1e-9


def methods_of(summary: Sequence[dict]) -> list[str]:
    """The methods of a summary, the paper's three first."""
    return sorted({r["method"] for r in summary}, key=lambda m: (m not in STYLE, list(STYLE).index(m) if m in STYLE else 0, m))


def _style(method: str, index: int) -> tuple[str, str, str]:
    return STYLE.get(method, (f"C{3 + index}", ":", method))


def _rows(summary: Sequence[dict], method: str, mask: str, low: float = -np.inf, high: float = np.inf) -> list[dict]:
    rows = [r for r in summary if r["method"] == method and r["mask"] == mask and low < r["alpha"] < high]
    return sorted(rows, key=lambda r: r["alpha"])


def _column(rows: Sequence[dict], column: str) -> np.ndarray:
    return np.array([np.nan if r.get(column) is None else r[column] for r in rows], dtype=float)


def sar_gap_at_equal_sir(summary: Sequence[dict], panel: str = "vocals", low: float = 0.1, high: float = 0.9) -> float:
    """Figure 3 as one number: the mean over the NMF's binary-mask points (low < alpha < high) of
    the DNN's SAR minus the NMF's at the same SIR, the DNN's SAR-vs-SIR curve interpolated linearly
    (NMF points outside the DNN's SIR range are skipped). NaN without two DNN points or an overlap."""
    dnn, nmf = (_rows(summary, m, "binary", low + _EPS, high - _EPS) for m in ("dnn", "nmf"))
    sir, sar = _column(dnn, f"{panel}_sir"), _column(dnn, f"{panel}_sar")
    keep = np.isfinite(sir) & np.isfinite(sar)
    sir, sar = sir[keep], sar[keep]
    if len(sir) < 2:
        return float("nan")
    order = np.argsort(sir)
    gaps = [
        float(np.interp(point_sir, sir[order], sar[order])) - point_sar
        for point_sir, point_sar in zip(_column(nmf, f"{panel}_sir"), _column(nmf, f"{panel}_sar"))
        if np.isfinite(point_sir) and np.isfinite(point_sar) and sir.min() <= point_sir <= sir.max()
    ]
    return float(np.mean(gaps)) if gaps else float("nan")


def gap_text(summary: Sequence[dict], panel: str) -> str:
    """'DNN SAR - NMF SAR at equal SIR: x dB (paper: ...)' for a panel of Figure 3."""
    gap = sar_gap_at_equal_sir(summary, panel)
    value = f"{gap:+.2f} dB" if np.isfinite(gap) else "n/a (needs an alpha sweep of both with overlapping SIR)"
    paper = f" (paper: {PAPER_SAR_GAP[panel]})" if panel in PAPER_SAR_GAP else ""
    return f"DNN SAR - NMF SAR at equal SIR: {value}{paper}"


def figure_alpha_curves(summary: Sequence[dict]):
    """Figure 2: 3 x 3 panels, rows a/b/c (mean, vocals, accompaniment), columns SDR/SIR/SAR."""
    from matplotlib.figure import Figure

    alphas = sorted({r["alpha"] for r in summary if r["mask"] == "binary"})
    swept = len(alphas) > 1
    fig = Figure(figsize=(13, 10), dpi=DPI, layout="constrained")
    axes = fig.subplots(3, 3, sharex=True)
    for row, (panel, title) in enumerate(PANELS):
        for col, metric in enumerate(METRICS):
            ax, column = axes[row, col], f"{panel}_{metric}"
            for k, method in enumerate(methods_of(summary)):
                colour, line, label = _style(method, k)
                binary = _rows(summary, method, "binary")
                x, mean = np.array([r["alpha"] for r in binary]), _column(binary, column)
                low, high = _column(binary, f"{column}_low"), _column(binary, f"{column}_high")
                if len(binary) == 1 and swept:
                    # A method scored at one alpha does not depend on it (the IBM): a level line.
                    x, mean, low, high = (np.array([alphas[0], alphas[-1]]), *(np.repeat(v, 2) for v in (mean, low, high)))
                    ax.plot(x, mean, line, color=colour, label=label)
                elif len(binary) > 1:
                    ax.plot(x, mean, line, color=colour, label=label, marker="o", markersize=3)
                else:
                    ax.errorbar(x, mean, yerr=_yerr(mean, low, high), fmt="o", color=colour, label=label, capsize=3)
                    continue
                ax.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)
            for k, method in enumerate(methods_of(summary)):
                soft = _rows(summary, method, "soft")
                if soft:
                    colour, _, label = _style(method, k)
                    mean, low, high = (_column(soft, f"{column}{s}") for s in ("", "_low", "_high"))
                    ax.errorbar([r["alpha"] for r in soft], mean, yerr=_yerr(mean, low, high), fmt="*", markersize=11,
                                color=colour, markeredgecolor="black", capsize=3, label=f"{label}, soft mask")
            ax.set_title(f"{title}: {metric.upper()}", fontsize=10)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("dB")
            if row == 2:
                ax.set_xlabel("alpha")
    axes[0, 0].legend(loc="best", fontsize=8)
    what = "binary masks (Eq. 2); stars: soft masks p, 1 - p (alpha-free)"
    if swept:
        fig.suptitle(f"SDR, SIR and SAR against alpha, {what}; mean and 95% interval across songs")
    else:
        fig.suptitle(f"SDR, SIR and SAR at one alpha ({alphas[0] if alphas else 'none'}): markers, no curves; {what}")
    return fig


def _yerr(mean: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray | None:
    """Error bars of a 95% interval; none where it is undefined (one song)."""
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        return None
    return np.stack([mean - low, high - mean])


def figure_sar_vs_sir(summary: Sequence[dict], methods: Sequence[str] = ("dnn", "nmf")):
    """Figure 3: SAR against SIR for 0.1 < alpha < 0.9 (binary masks), one curve per method, per
    panel a/b/c, each titled with `gap_text`; soft-mask scores as starred points."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 5.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    n_points = 0
    for ax, (panel, title) in zip(axes, PANELS):
        for k, method in enumerate(methods):
            colour, line, label = _style(method, k)
            rows = _rows(summary, method, "binary", 0.1 + _EPS, 0.9 - _EPS)
            sir, sar = _column(rows, f"{panel}_sir"), _column(rows, f"{panel}_sar")
            n_points = max(n_points, len(rows))
            if rows:
                ax.plot(sir, sar, line if len(rows) > 1 else "", color=colour, marker="o", markersize=4, label=label)
                for end in {id(r): r for r in (rows[0], rows[-1])}.values():
                    ax.annotate(f"{end['alpha']:.2f}", (end[f"{panel}_sir"], end[f"{panel}_sar"]), fontsize=8,
                                textcoords="offset points", xytext=(4, 4), color=colour)
            soft = _rows(summary, method, "soft")
            if soft:
                ax.plot(_column(soft, f"{panel}_sir"), _column(soft, f"{panel}_sar"), "*", markersize=12, color=colour,
                        markeredgecolor="black", label=f"{label}, soft mask")
        ax.set_title(f"{title}\n{gap_text(summary, panel)}", fontsize=9)
        ax.set_xlabel("SIR (dB)")
        ax.set_ylabel("SAR (dB)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    if n_points > 1:
        fig.suptitle("SAR against SIR as alpha goes from 0.1 to 0.9 (binary masks; labels: alpha at the ends)")
    else:
        fig.suptitle("SAR against SIR at a single alpha in (0.1, 0.9): points, no curves (score an alpha sweep for the paper's figure)")
    return fig


def figure_spectrograms(signals: dict[str, np.ndarray], sample_rate: int, n_fft: int, hop_length: int, title: str):
    """Figure 1: log-magnitude spectrograms (dB re the mixture's peak) on a log-frequency axis, one
    row per named signal (each (n_samples,))."""
    from matplotlib.figure import Figure

    from karaoke.config import StftConfig
    from karaoke.spectral import stft

    stft_cfg = StftConfig(n_fft=n_fft, hop_length=hop_length)
    names = list(signals)
    magnitudes = np.abs(stft(np.stack([np.asarray(signals[n], dtype=np.float32) for n in names]), stft_cfg))
    reference = float(np.max(magnitudes[names.index("mixture")] if "mixture" in names else magnitudes)) or 1.0
    decibels = 20 * np.log10(np.maximum(magnitudes / reference, 1e-5))
    # Bin 0 (DC) has no place on a log axis.
    frequencies = np.arange(1, magnitudes.shape[1]) * sample_rate / n_fft
    times = np.arange(magnitudes.shape[2]) * hop_length / sample_rate
    fig = Figure(figsize=(8, 2.0 * len(names)), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name, db in zip(axes, names, decibels):
        image = ax.pcolormesh(times, frequencies, db[1:], cmap="magma", vmin=-80, vmax=0, shading="nearest")
        ax.set_yscale("log")
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.set_ylabel("Hz")
    axes[-1].set_xlabel("seconds")
    fig.colorbar(image, ax=list(axes), label="dB", shrink=0.6)
    fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    return write_file(Path(path), lambda handle: fig.savefig(handle, format="png"))
