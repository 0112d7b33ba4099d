"""The paper's figures and a Markdown report page from a run's scores table.

Input layout (inside a run directory RUN):

- `RUN/scores/scores.parquet` (or `RUN/scores/scores.csv`): one row per separation of one song,
  columns `method` (dnn, nmf, ibm; others are plotted too), `song_id`, `split`, `alpha`,
  `seconds` (song length), and `vocals_sdr`, `vocals_sir`, `vocals_sar`, `accompaniment_sdr`,
  `accompaniment_sir`, `accompaniment_sar` (whole-song BSS-EVAL, dB). Optional: the framewise
  medians `{source}_{metric}_frames` and `{source}_sdr_mixture` (for GNSDR), as made by
  `karaoke.metrics.score_alpha_grid`. The IBM does not depend on alpha: its rows may carry any alpha.
- `RUN/scores/excerpt.npz` (optional, for Figure 1): float arrays `mixture`, `vocals`,
  `accompaniment`, `vocals_estimate`, `accompaniment_estimate` (each (n_samples,)) and integers
  `sample_rate`, `n_fft`, `hop_length`.

Output, in `RUN/report/`: `figure1.png` (spectrograms of the excerpt's sources, mixture and
separated sources, when the excerpt exists), `figure2.png` (SDR/SIR/SAR vs alpha with 95%
confidence intervals across songs, for a: the mean of the two sources, b: vocals, c:
accompaniment), `figure3.png` (SAR vs SIR for 0.1 < alpha < 0.9, DNN vs NMF), `summary.csv` (mean
and interval per method and alpha) and `report.md` (the tables and figures), written last.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from karaoke.errors import KaraokeError
from karaoke.metrics import METRICS, SCORE_COLUMNS, global_scores, summarise
from karaoke.storage import write_file

REQUIRED_COLUMNS = ("method", "song_id", "split", "alpha", "seconds", *SCORE_COLUMNS)
PANELS = (
    ("mean", "a: mean of vocals and accompaniment"),
    ("vocals", "b: vocals"),
    ("accompaniment", "c: accompaniment"),
)
STYLE = {"dnn": ("C0", "-", "DNN"), "nmf": ("C1", "-", "NMF"), "ibm": ("C2", "--", "IBM")}
DPI = 100


class ScoresError(KaraokeError, ValueError):
    """A scores table is missing, unreadable or lacks required columns."""


def write_scores(rows: Sequence[dict], path: str | Path) -> Path:
    """Write scores rows as Parquet or CSV (by the suffix of `path`)."""
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    path = Path(path)
    table = pa.Table.from_pylist(list(rows))
    if path.suffix == ".parquet":
        return write_file(path, lambda handle: pyarrow.parquet.write_table(table, handle))
    if path.suffix == ".csv":
        return write_file(path, lambda handle: pyarrow.csv.write_csv(table, handle))
    raise ScoresError(f"{path}: scores are written as .parquet or .csv")


def find_scores(run_dir: str | Path) -> Path:
    """RUN/scores/scores.parquet, else RUN/scores/scores.csv."""
    for name in ("scores.parquet", "scores.csv"):
        path = Path(run_dir) / "scores" / name
        if path.is_file():
            return path
    raise ScoresError(
        f"{run_dir}: no scores/scores.parquet or scores/scores.csv; run the evaluation first "
        "(the layout is described in karaoke/report.py)"
    )


def read_scores(path: str | Path) -> list[dict]:
    """Rows of a scores table (Parquet or CSV), checked for the required columns."""
    import pyarrow
    import pyarrow.csv
    import pyarrow.parquet

    path = Path(path)
    try:
        table = pyarrow.parquet.read_table(path) if path.suffix == ".parquet" else pyarrow.csv.read_csv(path)
    except (OSError, pyarrow.ArrowException) as exc:
        raise ScoresError(f"{path}: cannot read the scores table ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ScoresError(f"{path}: missing columns {missing}; expected {list(REQUIRED_COLUMNS)}")
    if table.num_rows == 0:
        raise ScoresError(f"{path}: the scores table has no rows")
    rows = table.to_pylist()
    for row in rows:
        row["method"] = str(row["method"]).lower()
    return rows


def _style(method: str, index: int) -> tuple[str, str, str]:
    return STYLE.get(method, (f"C{3 + index}", ":", method))


def _curves(summary: Sequence[dict], method: str, column: str, alphas: np.ndarray) -> tuple[np.ndarray, ...]:
    """(alpha, mean, low, high) of one method; a method scored at one alpha only (the IBM) is flat."""
    rows = [r for r in summary if r["method"] == method]
    x = np.array([r["alpha"] for r in rows], dtype=float)
    values = [
        np.array([r.get(f"{column}{suffix}", np.nan) for r in rows], dtype=float) for suffix in ("", "_low", "_high")
    ]
    if len(x) == 1:
        return (np.array([alphas.min(), alphas.max()]), *[np.repeat(v, 2) for v in values])
    return (x, *values)


def figure_alpha_curves(summary: Sequence[dict], path: str | Path) -> Path:
    """Figure 2: 3 x 3 panels, rows a/b/c (mean, vocals, accompaniment), columns SDR/SIR/SAR."""
    from matplotlib.figure import Figure

    methods = sorted(
        {r["method"] for r in summary}, key=lambda m: (m not in STYLE, list(STYLE).index(m) if m in STYLE else 0, m)
    )
    alphas = np.array(sorted({r["alpha"] for r in summary}), dtype=float)
    fig = Figure(figsize=(13, 10), dpi=DPI, layout="constrained")
    axes = fig.subplots(3, 3, sharex=True)
    for row, (source, title) in enumerate(PANELS):
        for col, metric in enumerate(METRICS):
            ax = axes[row, col]
            for k, method in enumerate(methods):
                colour, line, label = _style(method, k)
                x, mean, low, high = _curves(summary, method, f"{source}_{metric}", alphas)
                ax.plot(x, mean, line, color=colour, label=label, marker="o" if len(x) > 2 else None, markersize=3)
                ax.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)
            ax.set_title(f"{title}: {metric.upper()}", fontsize=10)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("dB")
            if row == 2:
                ax.set_xlabel("alpha")
    axes[0, 0].legend(loc="best", fontsize=9)
    fig.suptitle("SDR, SIR and SAR against alpha (mean and 95% confidence interval across songs)")
    return write_file(Path(path), lambda handle: fig.savefig(handle, format="png"))


def figure_sar_vs_sir(summary: Sequence[dict], path: str | Path, methods: Sequence[str] = ("dnn", "nmf")) -> Path:
    """Figure 3: SAR against SIR for 0.1 < alpha < 0.9, one curve per method, per panel a/b/c."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (source, title) in zip(axes, PANELS):
        for k, method in enumerate(methods):
            rows = sorted(
                (r for r in summary if r["method"] == method and 0.1 < r["alpha"] < 0.9), key=lambda r: r["alpha"]
            )
            if not rows:
                continue
            colour, line, label = _style(method, k)
            sir = np.array([r[f"{source}_sir"] for r in rows])
            sar = np.array([r[f"{source}_sar"] for r in rows])
            ax.plot(sir, sar, line, color=colour, marker="o", markersize=3, label=label)
            for end in (rows[0], rows[-1]):
                ax.annotate(
                    f"{end['alpha']:.2f}",
                    (end[f"{source}_sir"], end[f"{source}_sar"]),
                    fontsize=8,
                    textcoords="offset points",
                    xytext=(4, 4),
                    color=colour,
                )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("SIR (dB)")
        ax.set_ylabel("SAR (dB)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=9)
    fig.suptitle("SAR against SIR as alpha goes from 0.1 to 0.9 (labels: alpha at the ends)")
    return write_file(Path(path), lambda handle: fig.savefig(handle, format="png"))


def figure_spectrograms(
    signals: dict[str, np.ndarray], sample_rate: int, n_fft: int, hop_length: int, path: str | Path
) -> Path:
    """Figure 1: log-magnitude spectrograms (dB re the mixture's peak), one row per named signal."""
    from matplotlib.figure import Figure

    from karaoke.config import StftConfig
    from karaoke.spectral import stft

    stft_cfg = StftConfig(n_fft=n_fft, hop_length=hop_length)
    names = list(signals)
    magnitudes = np.abs(stft(np.stack([np.asarray(signals[n], dtype=np.float32) for n in names]), stft_cfg))
    reference = float(np.max(magnitudes[names.index("mixture")] if "mixture" in names else magnitudes)) or 1.0
    decibels = 20 * np.log10(np.maximum(magnitudes / reference, 1e-5))
    seconds = len(next(iter(signals.values()))) / sample_rate
    fig = Figure(figsize=(10, 2.3 * len(names)), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name, db in zip(axes, names, decibels):
        image = ax.imshow(
            db,
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=-80,
            vmax=0,
            extent=(0, seconds, 0, sample_rate / 2000),
        )
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.set_ylabel("kHz")
    axes[-1].set_xlabel("seconds")
    fig.colorbar(image, ax=list(axes), label="dB", shrink=0.6)
    return write_file(Path(path), lambda handle: fig.savefig(handle, format="png"))


def _fmt(row: dict, column: str) -> str:
    mean, low, high = row.get(column, np.nan), row.get(f"{column}_low", np.nan), row.get(f"{column}_high", np.nan)
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]" if np.isfinite(low) else f"{mean:.2f}"


def _markdown(summary: Sequence[dict], rows: Sequence[dict], figures: Sequence[str], source_path: Path) -> str:
    songs = sorted({r["song_id"] for r in rows})
    lines = [
        "# Deep Karaoke: evaluation report",
        "",
        (
            f"Scores: `{source_path}` ({len(rows)} rows, {len(songs)} songs, "
            f"methods {', '.join(sorted({r['method'] for r in rows}))}). Whole-song BSS-EVAL in dB; "
            "each cell is the mean across songs with its 95% confidence interval."
        ),
        "",
    ]
    lines += [f"![{name}]({name})" for name in figures] + [""]
    for source, title in PANELS:
        lines += [
            f"## {title[3:].capitalize()}",
            "",
            "| method | alpha | songs | SDR | SIR | SAR |",
            "|---|---|---|---|---|---|",
        ]
        for r in summary:
            cells = [_fmt(r, f"{source}_{m}") for m in METRICS]
            lines.append(f"| {r['method']} | {r['alpha']:.2f} | {r['n_songs']} | " + " | ".join(cells) + " |")
        lines.append("")
    if all(f"{s}_sdr_mixture" in rows[0] for s in ("vocals", "accompaniment")):
        lines += [
            "## GNSDR, GSIR, GSAR (length-weighted over songs)",
            "",
            "| method | alpha | vocals GNSDR | vocals GSIR | vocals GSAR | acc. GNSDR | acc. GSIR | acc. GSAR |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in summary:
            members = [x for x in rows if x["method"] == r["method"] and x["alpha"] == r["alpha"]]
            g = global_scores(members)
            cells = [f"{g[f'{s}_{n}']:.2f}" for s in ("vocals", "accompaniment") for n in ("gnsdr", "gsir", "gsar")]
            lines.append(f"| {r['method']} | {r['alpha']:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> Path:
    """Figures 1-3, summary.csv and report.md in RUN/report/ from RUN/scores/ (see the module docstring)."""
    run_dir = Path(run_dir)
    scores_path = find_scores(run_dir)
    rows = read_scores(scores_path)
    summary = summarise(rows)
    out = run_dir / "report"
    figures = []
    excerpt = run_dir / "scores" / "excerpt.npz"
    if excerpt.is_file():
        figures.append(_excerpt_figure(excerpt, out / "figure1.png"))
    figures.append(figure_alpha_curves(summary, out / "figure2.png").name)
    figures.append(figure_sar_vs_sir(summary, out / "figure3.png").name)
    write_scores(summary, out / "summary.csv")
    page = _markdown(summary, rows, figures, scores_path.relative_to(run_dir))
    return write_file(out / "report.md", lambda handle: handle.write(page.encode()))


def _excerpt_figure(path: Path, out: Path) -> str:
    names = ("vocals", "accompaniment", "mixture", "vocals_estimate", "accompaniment_estimate")
    with np.load(path) as data:
        missing = [k for k in (*names, "sample_rate", "n_fft", "hop_length") if k not in data.files]
        if missing:
            raise ScoresError(f"{path}: missing arrays {missing} (see karaoke/report.py for the layout)")
        signals = {name: data[name] for name in names}
        figure_spectrograms(signals, int(data["sample_rate"]), int(data["n_fft"]), int(data["hop_length"]), out)
    return out.name
