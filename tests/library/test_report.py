"""`karaoke report RUN`: figures and page from a scores table (real IBM scores + synthetic DNN/NMF)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from karaoke.corpora import list_songs
from karaoke.features import song_features
from karaoke.masks import masks_to_audio
from karaoke.metrics import SCORE_COLUMNS, score_alpha_grid
from karaoke.report import ScoresError, read_scores, write_scores
from karaoke_cli.main import main

ALPHAS = tuple(round(0.1 * i, 1) for i in range(1, 10))


def _synthetic_rows(method: str, song_id: str, seconds: float, rng, offset: float, mask: str = "binary") -> list[dict]:
    """Rows with the paper's trend: SIR rises and SAR falls with alpha, SDR peaks in between."""
    rows = []
    for alpha in ALPHAS if mask == "binary" else (0.5,):
        row = {"method": method, "mask": mask, "song_id": song_id, "split": "test", "alpha": alpha, "seconds": seconds}
        for source in ("vocals", "accompaniment"):
            sir = offset + 20 * alpha + rng.normal(0, 1)
            sar = offset + 12 - 10 * alpha + rng.normal(0, 1)
            row |= {
                f"{source}_sir": sir,
                f"{source}_sar": sar,
                f"{source}_sdr": min(sir, sar) - 1,
                f"{source}_sdr_mixture": -3.0,
            }
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def run_dir(small_config, tmp_path_factory):
    """RUN/scores/ with real IBM scores of the synthetic songs, synthetic DNN/NMF rows, an excerpt."""
    config = small_config
    rng = np.random.default_rng(0)
    run = tmp_path_factory.mktemp("run")
    rows = []
    for k, entry in enumerate(list_songs(config.corpus)[:3]):
        song = entry.load(config.corpus.sample_rate, config.corpus.mixing)
        features = song_features(song, config)
        references = np.stack([song.vocals, song.accompaniment])
        ibm = features.ibm.astype(np.float32)
        meta = {"method": "ibm", "song_id": song.song_id, "split": song.split, "seconds": song.seconds}
        rows += [
            meta | row
            for row in score_alpha_grid(features.mixture_stft, ibm, references, song.mixture, (0.5,), config.stft)
        ]
        rows += _synthetic_rows("dnn", song.song_id, song.seconds, rng, 2.0 + k)
        rows += _synthetic_rows("dnn", song.song_id, song.seconds, rng, 4.0 + k, mask="soft")
        rows += _synthetic_rows("nmf", song.song_id, song.seconds, rng, -2.0 + k)
        if k == 0:
            vocals, accompaniment = masks_to_audio(features.mixture_stft, ibm, 0.5, config.stft, len(song.mixture))
            np.savez(
                run / "excerpt.npz",
                mixture=song.mixture,
                vocals=song.vocals,
                accompaniment=song.accompaniment,
                vocals_estimate=vocals,
                accompaniment_estimate=accompaniment,
                sample_rate=song.sample_rate,
                n_fft=config.stft.n_fft,
                hop_length=config.stft.hop_length,
                song_id=song.song_id,
                start_seconds=0.0,
                method="ibm",
                alpha=0.5,
            )
    (run / "scores").mkdir()
    (run / "excerpt.npz").rename(run / "scores" / "excerpt.npz")
    write_scores(rows, run / "scores" / "scores.parquet")
    return run


def test_report_opens_with_the_papers_comparison_then_figures_and_tables(run_dir):
    from karaoke.figures import sar_gap_at_equal_sir
    from karaoke.metrics import summarise

    result = CliRunner().invoke(main, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    out = run_dir / "report"
    for name in ("figure1.png", "figure2.png", "figure3.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.md").read_text()
    lines = page.splitlines()
    assert lines[2] == "## Does this run reproduce the paper?"
    summary = summarise(read_scores(run_dir / "scores" / "scores.parquet"))
    gap = sar_gap_at_equal_sir(summary, "vocals")
    assert np.isfinite(gap) and f"- b: vocals: DNN SAR - NMF SAR at equal SIR: {gap:+.2f} dB (paper: ~5 dB)" in lines
    mean_gap = sar_gap_at_equal_sir(summary, "mean")
    verdict = "reproduces" if mean_gap > 0 else "does not reproduce"
    assert f"**This run {verdict} the finding:**" in page
    # The GNSDR table at alpha 0.5 comes before the figures, with the soft masks as their own row.
    assert page.index("| dnn | soft | 0.50 | 3 |") < page.index("](figure1.png)") < page.index("## Vocals")
    for figure in ("figure1.png", "figure2.png", "figure3.png"):
        assert f"]({figure})" in page
    assert "| dnn | binary | 0.10 | 3 |" in page and "| ibm | binary | 0.50 | 3 |" in page
    assert not list(out.glob(".*.tmp"))

    summary = read_csv_rows(out / "summary.csv")
    ibm = [r for r in summary if r["method"] == "ibm"]
    scores = [r for r in read_scores(run_dir / "scores" / "scores.parquet") if r["method"] == "ibm"]
    assert len(ibm) == 1 and ibm[0]["vocals_sdr"] == pytest.approx(np.mean([r["vocals_sdr"] for r in scores]))


def test_a_song_with_an_undefined_score_is_counted_out_in_the_table(run_dir, tmp_path):
    """A silent estimate has no SIR: the mean is over the other songs, and the page says so."""
    from karaoke.report import write_report

    rows = read_scores(run_dir / "scores" / "scores.parquet")
    first = rows[0]["song_id"]
    for row in rows:
        if row["method"] == "nmf" and row["song_id"] == first:
            row["vocals_sir"] = float("nan")
    (tmp_path / "scores").mkdir()
    write_scores(rows, tmp_path / "scores" / "scores.parquet")
    page = write_report(tmp_path).read_text()
    assert "(2 of 3 songs)" in page
    assert not any("(2 of 3 songs)" in line for line in page.splitlines() if line.startswith("| dnn"))


def read_csv_rows(path) -> list[dict]:
    import pyarrow.csv

    return pyarrow.csv.read_csv(path).to_pylist()


def test_csv_scores_round_trip(tmp_path):
    rows = _synthetic_rows("dnn", "song", 10.0, np.random.default_rng(1), 0.0)
    write_scores(rows, tmp_path / "scores.csv")
    back = read_scores(tmp_path / "scores.csv")
    assert len(back) == len(rows)
    assert all(b[c] == pytest.approx(r[c]) for b, r in zip(back, rows) for c in SCORE_COLUMNS)


def test_missing_scores_and_columns_are_clear_errors(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "scores/scores.parquet" in result.output
    rows = [
        {k: v for k, v in r.items() if k != "vocals_sar"}
        for r in _synthetic_rows("dnn", "s", 1.0, np.random.default_rng(2), 0.0)
    ]
    write_scores(rows, tmp_path / "bad.parquet")
    with pytest.raises(ScoresError, match="vocals_sar"):
        read_scores(tmp_path / "bad.parquet")
