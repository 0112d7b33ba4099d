"""Scores rows, the alpha grid, framewise medians, GNSDR and confidence intervals."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from karaoke.config import config_from_dict
from karaoke.corpora import list_songs
from karaoke.features import song_features
from karaoke.masks import masks_to_audio
from karaoke.metrics import (
    SCORE_COLUMNS,
    Scores,
    bss_eval_mir_eval,
    confidence_interval,
    framewise_median,
    global_scores,
    score_alpha_grid,
    score_separations,
    summarise,
)


@pytest.fixture(scope="module")
def clip(mir1k_root):
    """A real MIR-1K clip with a soft vocal probability (the IBM smoothed over time)."""
    from scipy.ndimage import uniform_filter1d

    corpus = {"layout": "mir1k", "root": str(mir1k_root), "sample_rate": 16000, "mixing": "sum"}
    config = config_from_dict({"corpus": corpus, "stft": {"n_fft": 1024, "hop_length": 256}})
    song = next(s for s in list_songs(config.corpus) if s.song_id == "Ani_1_03").load(16000, "sum")
    features = song_features(song, config)
    probability = uniform_filter1d(features.ibm.astype(np.float32), size=9, axis=1)
    return config, song, features.mixture_stft, probability


def test_alpha_grid_rows_match_mir_eval_and_show_the_sir_sar_trade_off(clip):
    import mir_eval

    config, song, mixture_stft, probability = clip
    references = np.stack([song.vocals, song.accompaniment])
    alphas = (0.2, 0.5, 0.8)
    rows = score_alpha_grid(mixture_stft, probability, references, song.mixture, alphas, config.stft, 16000)
    assert [r["alpha"] for r in rows] == list(alphas)

    for row in (rows[0], rows[2]):
        estimates = np.stack(masks_to_audio(mixture_stft, probability, row["alpha"], config.stft, len(song.mixture)))
        expected = bss_eval_mir_eval(references, estimates).as_dict()
        for column in SCORE_COLUMNS:
            assert row[column] == pytest.approx(expected[column], abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        framewise = mir_eval.separation.bss_eval_sources_framewise(references, estimates, 16000, 16000)
    assert rows[2]["vocals_sir_frames"] == pytest.approx(np.nanmedian(framewise[1][0]), abs=1e-6)
    assert rows[2]["accompaniment_sar_frames"] == pytest.approx(np.nanmedian(framewise[2][1]), abs=1e-6)
    mixture_scores = bss_eval_mir_eval(references, np.stack([song.mixture, song.mixture]))
    assert rows[1]["vocals_sdr_mixture"] == pytest.approx(mixture_scores.sdr[0], abs=1e-6)

    # Eq. 2: a higher alpha keeps only the confident bins of each source: less interference.
    for source in ("vocals", "accompaniment"):
        assert rows[2][f"{source}_sir"] > rows[1][f"{source}_sir"] > rows[0][f"{source}_sir"]


def test_fast_and_mir_eval_scores_agree_on_a_synthetic_song(small_config):
    from karaoke.bss_engine import bss_eval
    from karaoke.estimators import IdealBinaryMask, separate_song

    song = list_songs(small_config.corpus)[0].load(small_config.corpus.sample_rate, small_config.corpus.mixing)
    references = np.stack([song.vocals, song.accompaniment])
    estimates = np.stack(separate_song(IdealBinaryMask(), song, small_config, 0.5))
    fast, reference = Scores(*bss_eval(references, estimates)), bss_eval_mir_eval(references, estimates)
    for name in ("sdr", "sir", "sar"):
        np.testing.assert_allclose(getattr(fast, name), getattr(reference, name), rtol=0, atol=1e-6)


def test_scorer_rejects_mismatched_references():
    with pytest.raises(ValueError, match="must be"):
        score_separations(lambda: [(np.zeros((2, 100)), np.zeros((1, 2, 100)), np.zeros(99))])


def test_framewise_median_skips_silent_windows_quietly():
    values = np.array([[1.0, np.nan, 3.0, 5.0], [np.nan] * 4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        median = framewise_median(values)
    assert median[0] == 3.0 and np.isnan(median[1])


def test_confidence_interval_is_a_t_interval_with_the_stated_coverage():
    from scipy import stats

    rng = np.random.default_rng(0)
    sample = rng.normal(2.0, 3.0, size=12)
    mean, low, high = confidence_interval(np.append(sample, [np.nan, np.inf]))
    expected = stats.t.interval(0.95, len(sample) - 1, loc=sample.mean(), scale=stats.sem(sample))
    assert mean == pytest.approx(sample.mean()) and (low, high) == pytest.approx(expected)

    covered = [lo <= 2.0 <= hi for _, lo, hi in (confidence_interval(rng.normal(2.0, 3.0, 8)) for _ in range(2000))]
    assert 0.935 < np.mean(covered) < 0.965
    assert np.isnan(confidence_interval([4.0])[1:]).all()
    assert np.isnan(confidence_interval([])).all()


def _row(method, song_id, alpha, seconds, base):
    row = {"method": method, "mask": "binary", "song_id": song_id, "alpha": alpha, "seconds": seconds}
    for k, column in enumerate(SCORE_COLUMNS):
        row[column] = base + k
    row["vocals_sdr_mixture"] = base - 5
    row["accompaniment_sdr_mixture"] = base + 2
    return row


def test_global_scores_weight_clips_by_length():
    short, long = _row("dnn", "a", 0.5, 1.0, 4.0), _row("dnn", "b", 0.5, 3.0, 8.0)
    broken = _row("dnn", "c", 0.5, 10.0, 0.0) | {"vocals_sdr": np.nan}
    scores = global_scores([short, long, broken])

    def nsdr(r):
        return r["vocals_sdr"] - r["vocals_sdr_mixture"]

    assert scores["vocals_gnsdr"] == pytest.approx((1.0 * nsdr(short) + 3.0 * nsdr(long)) / 4.0)
    weighted_sar = (
        1.0 * short["accompaniment_sar"] + 3.0 * long["accompaniment_sar"] + 10.0 * broken["accompaniment_sar"]
    ) / 14.0
    assert scores["accompaniment_gsar"] == pytest.approx(weighted_sar)


def test_summarise_groups_by_method_and_alpha_with_the_source_mean():
    rows = [
        _row(m, s, a, 10.0, b)
        for m, b0 in (("dnn", 0.0), ("nmf", -3.0))
        for a in (0.2, 0.5)
        for s, b in (("x", b0), ("y", b0 + 2), ("z", b0 + 7))
    ]
    summary = summarise(rows)
    assert [(s["method"], s["alpha"]) for s in summary] == [("dnn", 0.2), ("dnn", 0.5), ("nmf", 0.2), ("nmf", 0.5)]
    first = summary[0]
    assert first["n_songs"] == 3
    members = [r for r in rows if r["method"] == "dnn" and r["alpha"] == 0.2]
    expected_mean = np.mean([(r["vocals_sir"] + r["accompaniment_sir"]) / 2 for r in members])
    assert first["mean_sir"] == pytest.approx(expected_mean)
    assert first["vocals_sdr_low"] < first["vocals_sdr"] < first["vocals_sdr_high"]
