"""The paper's figures and a Markdown report page from a run's scores table.

Input layout (inside a run directory RUN):

- `RUN/scores/scores.parquet` (or `RUN/scores/scores.csv`): one row per separation of one song,
  columns `method` (dnn, nmf, ibm; others are plotted too), `song_id`, `split`, `alpha`,
  `seconds` (song length), and `vocals_sdr`, `vocals_sir`, `vocals_sar`, `accompaniment_sdr`,
  `accompaniment_sir`, `accompaniment_sar` (whole-song BSS-EVAL, dB). Optional: the framewise
  medians `{source}_{metric}_frames` and `{source}_sdr_mixture` (for GNSDR), as made by
  `karaoke.metrics.score_alpha_grid`. The IBM does not depend on alpha: its rows may carry any alpha.
  Also `mask` ("binary", Eq. 2, when absent; or "soft").
- `RUN/scores/excerpt.npz` (optional, for Figure 1): float arrays `mixture`, `vocals`,
  `accompaniment`, `vocals_estimate`, `accompaniment_estimate` (each (n_samples,)), integers
  `sample_rate`, `n_fft`, `hop_length`, and optionally `song_id`, `start_seconds`, `method`, `alpha`
  for its title.

Output, in `RUN/report/`: `figure1.png` (spectrograms of the excerpt's sources, mixture and
separated sources, when the excerpt exists), `figure2.png` (SDR/SIR/SAR vs alpha with 95%
confidence intervals across songs, for a: the mean of the two sources, b: vocals, c:
accompaniment), `figure3.png` (SAR vs SIR for 0.1 < alpha < 0.9, DNN vs NMF; `karaoke.figures`),
`summary.csv` (mean and interval per method, mask and alpha) and `report.md`, written last: it opens
with Figure 3's comparison as numbers and the GNSDR table, then the figures and full tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from karaoke.errors import KaraokeError
from karaoke.figures import (
    PANELS,
    figure_alpha_curves,
    figure_sar_vs_sir,
    figure_spectrograms,
    gap_text,
    sar_gap_at_equal_sir,
    save_figure,
)
from karaoke.metrics import METRICS, SCORE_COLUMNS, global_scores, summarise
from karaoke.storage import write_file

REQUIRED_COLUMNS = ("method", "song_id", "split", "alpha", "seconds", *SCORE_COLUMNS)


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
        # A table of binary-mask scores only may leave the mask out.
        row["mask"] = str(row.get("mask") or "binary").lower()
    return rows


def _fmt(row: dict, column: str) -> str:
    mean, low, high = row.get(column, np.nan), row.get(f"{column}_low", np.nan), row.get(f"{column}_high", np.nan)
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]" if np.isfinite(low) else f"{mean:.2f}"


def _fmt(row: dict, column: str, members: Sequence[dict]) -> str:
    mean, low, high = row.get(column, np.nan), row.get(f"{column}_low", np.nan), row.get(f"{column}_high", np.nan)
    if mean is None or not np.isfinite(mean):
        return "n/a"
    text = f"{mean:.2f} [{low:.2f}, {high:.2f}]" if low is not None and np.isfinite(low) else f"{mean:.2f}"
    return text + _defined(members, [column])


def _defined(members: Sequence[dict], columns: Sequence[str]) -> str:
    """' (k of n songs)' when a score is undefined (a silent source or estimate) for some songs: the
    mean is over the others, and a reader must see that it is."""
    def finite(row: dict, column: str) -> bool:
        if column.startswith("mean_"):
            return all(finite(row, f"{s}_{column[5:]}") for s in ("vocals", "accompaniment"))
        value = row.get(column)
        return value is not None and bool(np.isfinite(value))

    k = sum(all(finite(r, c) for c in columns) for r in members)
    return "" if k == len(members) else f" ({k} of {len(members)} songs)"


def _members(rows: Sequence[dict], entry: dict) -> list[dict]:
    return [r for r in rows if all(r[key] == entry[key] for key in ("method", "mask", "alpha"))]


def _headline(summary: Sequence[dict], alpha: float) -> list[dict]:
    """The summary rows a reader looks at first: every method at `alpha` (the IBM at its one alpha)."""
    def at(row: dict) -> bool:
        return abs(row["alpha"] - alpha) < 1e-9 or (row["method"] == "ibm")

    return [r for r in summary if at(r)]


def _verdict(summary: Sequence[dict]) -> str:
    """One sentence: does this run show the paper's Figure 3 finding (panel a, the mean)?"""
    gap = sar_gap_at_equal_sir(summary, "mean")
    if not np.isfinite(gap):
        return "**Not measurable here:** Figure 3 needs binary-mask sweeps of both the DNN and the NMF whose SIR ranges overlap."
    if gap > 0:
        return f"**This run reproduces the finding:** at equal SIR the DNN's SAR is {gap:.2f} dB above the NMF's."
    return (
        f"**This run does not reproduce the finding:** at equal SIR the NMF's SAR is {-gap:.2f} dB above the "
        "DNN's (the paper's DNN had far more data and training than this run's)."
    )


def _markdown(summary: Sequence[dict], rows: Sequence[dict], figures: Sequence[str], source_path: Path, alpha: float) -> str:
    songs = sorted({r["song_id"] for r in rows})
    lines = [
        "# Deep Karaoke: evaluation report",
        "",
        "## Does this run reproduce the paper?",
        "",
        (
            "The paper's claim (its Figure 3): as alpha moves, the DNN trades interference for artefacts "
            "better than the NMF, with a higher SAR at equal SIR. Here (binary masks, 0.1 < alpha < 0.9):"
        ),
        "",
    ]
    lines += [f"- {title}: {gap_text(summary, panel)}" for panel, title in PANELS]
    lines += ["", _verdict(summary), ""]
    if all(f"{s}_sdr_mixture" in rows[0] for s in ("vocals", "accompaniment")):
        lines += [
            f"GNSDR, GSIR, GSAR (dB, length-weighted over songs) at alpha {alpha:.2f}:",
            "",
            "| method | mask | alpha | songs | vocals GNSDR | GSIR | GSAR | acc. GNSDR | GSIR | GSAR |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in _headline(summary, alpha):
            members = _members(rows, r)
            g = global_scores(members)
            cells = [f"{g[f'{s}_{n}']:.2f}" for s in ("vocals", "accompaniment") for n in ("gnsdr", "gsir", "gsar")]
            count = f"{len(members)}{_defined(members, [f'{s}_sdr' for s in ('vocals', 'accompaniment')])}"
            lines.append(f"| {r['method']} | {r['mask']} | {r['alpha']:.2f} | {count} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        (
            f"Scores: `{source_path}` ({len(rows)} rows, {len(songs)} songs, "
            f"methods {', '.join(sorted({r['method'] for r in rows}))}). Whole-song BSS-EVAL in dB; "
            "each cell below is the mean across songs with its 95% confidence interval, over the songs "
            "where the score is defined (a count follows a cell where some are not)."
        ),
        "",
    ]
    lines += [f"![{name}]({name})" for name in figures] + [""]
    for panel, title in PANELS:
        lines += [
            f"## {title[3:].capitalize()}",
            "",
            "| method | mask | alpha | songs | SDR | SIR | SAR |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in summary:
            members = _members(rows, r)
            cells = [_fmt(r, f"{panel}_{m}", members) for m in METRICS]
            lines.append(f"| {r['method']} | {r['mask']} | {r['alpha']:.2f} | {r['n_songs']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> Path:
    """Figures 1-3, summary.csv and report.md in RUN/report/ from RUN/scores/ (see the module
    docstring). The report opens at the `evaluation.alpha` of RUN/scores/config.yaml (0.5 without one)."""
    run_dir = Path(run_dir)
    scores_path = find_scores(run_dir)
    alpha = 0.5
    if (run_dir / "scores" / "config.yaml").is_file():
        from karaoke.config import load_config

        alpha = load_config(run_dir / "scores" / "config.yaml").evaluation.alpha
    rows = read_scores(scores_path)
    summary = summarise(rows)
    out = run_dir / "report"
    figures = []
    excerpt = run_dir / "scores" / "excerpt.npz"
    if excerpt.is_file():
        figures.append(save_figure(excerpt_figure(excerpt), out / "figure1.png").name)
    figures.append(save_figure(figure_alpha_curves(summary), out / "figure2.png").name)
    figures.append(save_figure(figure_sar_vs_sir(summary), out / "figure3.png").name)
    write_scores(summary, out / "summary.csv")
    page = _markdown(summary, rows, figures, scores_path.relative_to(run_dir), alpha)
    return write_file(out / "report.md", lambda handle: handle.write(page.encode()))


def excerpt_figure(path: Path):
    """Figure 1 from an excerpt.npz (the layout of the module docstring)."""
    names = ("vocals", "accompaniment", "mixture", "vocals_estimate", "accompaniment_estimate")
    with np.load(path) as data:
        missing = [k for k in (*names, "sample_rate", "n_fft", "hop_length") if k not in data.files]
        if missing:
            raise ScoresError(f"{path}: missing arrays {missing} (see karaoke/report.py for the layout)")
        signals = {name: data[name] for name in names}
        rate = int(data["sample_rate"])
        title = "Figure 1"
        if "song_id" in data.files:
            title = (
                f"{data['song_id']} from {float(data['start_seconds']):.2f} s: {str(data['method']).upper()}, "
                f"binary masks at alpha {float(data['alpha']):.2f}"
            )
        return figure_spectrograms(signals, rate, int(data["n_fft"]), int(data["hop_length"]), title)
