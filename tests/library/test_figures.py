"""The paper's figures (karaoke.figures): what each one draws, read back from its axes."""

from __future__ import annotations

import numpy as np
import pytest

from karaoke.figures import (
    figure_alpha_curves,
    figure_sar_vs_sir,
    figure_spectrograms,
    sar_gap_at_equal_sir,
)
from karaoke.metrics import summarise

ALPHAS = tuple(round(0.1 * i, 1) for i in range(1, 10))


def _rows(method: str, sir_of_alpha, sar_of_sir, alphas=ALPHAS, mask: str = "binary", songs: int = 3) -> list[dict]:
    """Per-song rows on a known SAR-vs-SIR line (songs spread symmetrically around it)."""
    rows = []
    for song in range(songs):
        for alpha in alphas:
            sir = sir_of_alpha(alpha) + (song - (songs - 1) / 2)
            sar = sar_of_sir(sir_of_alpha(alpha)) + (song - (songs - 1) / 2)
            row = {"method": method, "mask": mask, "alpha": alpha, "song_id": f"s{song}", "seconds": 1.0}
            for source in ("vocals", "accompaniment"):
                row |= {f"{source}_sir": sir, f"{source}_sar": sar, f"{source}_sdr": min(sir, sar) - 1}
            rows.append(row)
    return rows


def _paper_like(gap: float = 3.0) -> list[dict]:
    """DNN and NMF on parallel SAR-vs-SIR lines `gap` dB apart; the IBM at one alpha; DNN soft masks."""
    return (
        _rows("dnn", lambda a: 5 + 20 * a, lambda sir: 20 - 0.5 * sir)
        + _rows("nmf", lambda a: 2 + 15 * a, lambda sir: 20 - gap - 0.5 * sir)
        + _rows("ibm", lambda a: 25.0, lambda sir: 18.0, alphas=(0.5,))
        + _rows("dnn", lambda a: 12.0, lambda sir: 14.0, alphas=(0.5,), mask="soft")
    )


def test_sar_gap_is_the_vertical_distance_between_the_curves():
    summary = summarise(_paper_like(gap=3.0))
    for panel in ("mean", "vocals", "accompaniment"):
        assert sar_gap_at_equal_sir(summary, panel) == pytest.approx(3.0)
    assert sar_gap_at_equal_sir(summarise(_paper_like(gap=-1.5)), "vocals") == pytest.approx(-1.5)


def test_sar_gap_needs_a_sweep_of_both_methods():
    one_alpha = [r for r in _paper_like() if r["alpha"] == 0.5]
    assert np.isnan(sar_gap_at_equal_sir(summarise(one_alpha), "vocals"))


def test_figure2_draws_binary_curves_over_alpha_with_soft_masks_as_points():
    summary = summarise(_paper_like())
    fig = figure_alpha_curves(summary)
    ax = fig.axes[3]  # row b (vocals), column SDR
    lines = {line.get_label(): line for line in ax.lines}
    dnn = [r for r in summary if r["method"] == "dnn" and r["mask"] == "binary"]
    np.testing.assert_allclose(lines["DNN"].get_xdata(), ALPHAS)
    np.testing.assert_allclose(lines["DNN"].get_ydata(), [r["vocals_sdr"] for r in dnn])
    # The IBM does not depend on alpha: a level line across the sweep.
    ibm = lines["IBM"].get_ydata()
    assert list(lines["IBM"].get_xdata()) == [0.1, 0.9] and ibm[0] == ibm[1] == pytest.approx(17.0)
    soft = [c for c in ax.containers if c.get_label() == "DNN, soft mask"]
    assert len(soft) == 1
    x, y = soft[0].lines[0].get_data()
    assert list(x) == [0.5] and y[0] == pytest.approx(11.0)
    assert "against alpha" in fig.texts[0].get_text()


def test_figure2_with_one_alpha_draws_markers_and_says_so():
    summary = summarise([r for r in _paper_like() if r["alpha"] == 0.5])
    fig = figure_alpha_curves(summary)
    ax = fig.axes[0]
    assert not [line for line in ax.lines if len(line.get_xdata()) > 1]
    assert {c.get_label() for c in ax.containers} >= {"DNN", "NMF", "IBM"}
    assert "one alpha (0.5): markers, no curves" in fig.texts[0].get_text()


def test_figure3_plots_sar_against_sir_inside_the_open_alpha_range_with_its_number():
    summary = summarise(_paper_like(gap=3.0))
    fig = figure_sar_vs_sir(summary)
    for ax, panel in zip(fig.axes, ("mean", "vocals", "accompaniment")):
        dnn = next(line for line in ax.lines if line.get_label() == "DNN")
        inside = [r for r in summary if r["method"] == "dnn" and r["mask"] == "binary" and 0.1 < r["alpha"] < 0.85]
        np.testing.assert_allclose(dnn.get_xdata(), [r[f"{panel}_sir"] for r in inside])
        np.testing.assert_allclose(dnn.get_ydata(), [r[f"{panel}_sar"] for r in inside])
        assert "DNN SAR - NMF SAR at equal SIR: +3.00 dB" in ax.get_title()
    assert "(paper: ~5 dB)" in fig.axes[1].get_title()


def test_figure1_is_on_a_log_frequency_axis_and_names_its_song():
    rate, n = 16000, 24000
    t = np.arange(n) / rate
    signals = {"mixture": np.sin(2 * np.pi * 440 * t), "vocals": np.sin(2 * np.pi * 440 * t)}
    fig = figure_spectrograms(signals, rate, 512, 128, "song_a from 1.00 s")
    assert [ax.get_yscale() for ax in fig.axes[:2]] == ["log", "log"]
    assert fig.axes[0].get_ylim()[0] > 0 and fig.texts[0].get_text() == "song_a from 1.00 s"
    assert fig.axes[0].get_xlim()[1] == pytest.approx(n / rate, abs=0.05)
