"""The fast BSS-EVAL engine against mir_eval's `bss_eval_sources` on real songs (../shared/data), whole and streamed in blocks."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from karaoke.bss_engine import StreamingBss, bss_eval
from karaoke.bss_frames import FramewiseBss
from karaoke.config import config_from_dict
from karaoke.corpora import list_songs
from karaoke.estimators import IdealBinaryMask, separate_song
from karaoke.masks import masks_to_audio
from karaoke.mixing import MixedSong

TOLERANCE_DB = 1e-6


def _mir_eval(references, estimates):
    import mir_eval

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return np.array(mir_eval.separation.bss_eval_sources(references, estimates, compute_permutation=False)[:3])


def _config(layout: str, root, sample_rate: int, n_fft: int, mixing: str = "paper"):
    corpus = {"layout": layout, "root": str(root), "sample_rate": sample_rate, "mixing": mixing}
    return config_from_dict({"corpus": corpus, "stft": {"n_fft": n_fft, "hop_length": n_fft // 4}})


def _load(config, song_id: str | None = None) -> MixedSong:
    songs = list_songs(config.corpus)
    song = next(s for s in songs if song_id is None or s.song_id == song_id)
    return song.load(config.corpus.sample_rate, config.corpus.mixing)


@pytest.fixture(scope="module")
def mir1k(mir1k_root):
    config = _config("mir1k", mir1k_root, 16000, 1024, mixing="sum")
    return config, _load(config, "Ani_1_03")


@pytest.fixture(scope="module")
def musdb(musdb_root):
    config = _config("musdb", musdb_root, 44100, 2048)
    return config, _load(config)


def _soft_estimates(song: MixedSong, config, alphas) -> np.ndarray:
    """(n_alphas, 2, n_samples) estimates from a soft mask: the IBM smoothed over time."""
    from scipy.ndimage import uniform_filter1d

    from karaoke.features import song_features

    features = song_features(song, config)
    probability = uniform_filter1d(features.ibm.astype(np.float32), size=9, axis=1)
    return np.stack(
        [
            np.stack(masks_to_audio(features.mixture_stft, probability, a, config.stft, len(song.mixture)))
            for a in alphas
        ]
    )


@pytest.mark.parametrize("corpus", ["mir1k", "musdb"])
def test_agrees_with_mir_eval_on_real_songs(corpus, request):
    config, song = request.getfixturevalue(corpus)
    references = np.stack([song.vocals, song.accompaniment])
    estimates = np.concatenate([np.stack(separate_song(IdealBinaryMask(), song, config, 0.5))[None], _soft_estimates(song, config, [0.2, 0.7])])
    fast = np.stack(bss_eval(references, estimates), axis=1)  # (n_est, 3, 2)
    for est, scores in zip(estimates, fast):
        expected = _mir_eval(references, est)
        np.testing.assert_allclose(scores, expected, rtol=0, atol=TOLERANCE_DB)
    # The estimates differ, so the scores do too: the agreement is not one value repeated.
    assert np.ptp(fast[:, 0, 0]) > 0.1


def test_near_silent_reference(mir1k):
    """A vocal 60 dB below its level in the song, and one that is silent but for half a second."""
    config, song = mir1k
    quiet = (song.vocals * 1e-3).astype(np.float32)
    burst = np.zeros_like(song.vocals)
    burst[16000:24000] = song.vocals[16000:24000]
    for vocals in (quiet, burst):
        variant = MixedSong(
            song.song_id, song.split, song.sample_rate, vocals + song.accompaniment, vocals, song.accompaniment
        )
        references = np.stack([variant.vocals, variant.accompaniment])
        estimates = np.stack(separate_song(IdealBinaryMask(), variant, config, 0.5))
        fast = np.array(bss_eval(references, estimates))
        np.testing.assert_allclose(fast, _mir_eval(references, estimates), rtol=0, atol=TOLERANCE_DB)


def test_silent_reference_is_nan_not_an_error(mir1k):
    _, song = mir1k
    references = np.stack([np.zeros_like(song.vocals), song.accompaniment])
    estimates = np.stack([song.mixture * 0.5, song.mixture * 0.5])
    with pytest.raises(ValueError):
        _mir_eval(references, estimates)
    assert np.isnan(np.array(bss_eval(references, estimates))).all()


def test_silent_estimate_is_nan_and_the_other_source_is_still_scored(mir1k):
    import mir_eval

    config, song = mir1k
    references = np.stack([song.vocals, song.accompaniment]).astype(np.float64)
    _, accompaniment = separate_song(IdealBinaryMask(), song, config, 0.5)
    estimates = np.stack([np.zeros_like(accompaniment), accompaniment])
    sdr, sir, sar = bss_eval(references, estimates)
    assert np.isnan([sdr[0], sir[0], sar[0]]).all()
    expected = mir_eval.separation._bss_source_crit(
        *mir_eval.separation._bss_decomp_mtifilt(references, estimates[1].astype(np.float64), 1, 512)
    )
    np.testing.assert_allclose([sdr[1], sir[1], sar[1]], expected, rtol=0, atol=TOLERANCE_DB)


def test_unprocessed_mixture_sdr_agrees_and_sar_is_rounding_noise(mir1k):
    _, song = mir1k
    references = np.stack([song.vocals, song.accompaniment])
    estimates = np.stack([song.mixture, song.mixture])
    sdr, sir, sar = bss_eval(references, estimates)
    expected = _mir_eval(references, estimates)
    np.testing.assert_allclose([sdr, sir], expected[:2], rtol=0, atol=TOLERANCE_DB)
    np.testing.assert_allclose(bss_eval(references, estimates, sdr_only=True)[0], expected[0], rtol=0, atol=TOLERANCE_DB)
    # The mixture is in the span of the references: its artefacts are rounding noise in both.
    assert (sar > 150).all() and (expected[2] > 150).all()


def test_framewise_agrees_with_mir_eval_including_silent_windows(mir1k):
    import mir_eval

    _, song = mir1k
    vocals = song.vocals.copy()
    vocals[16000:32000] = 0  # window 1 has a silent reference: NaN in both
    references = np.stack([vocals, song.accompaniment])
    estimates = np.stack([0.7 * vocals + 0.1 * song.accompaniment, song.accompaniment + 0.2 * vocals])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        expected = np.array(mir_eval.separation.bss_eval_sources_framewise(references, estimates, 16000, 16000)[:3])
    fast = np.array(_framewise(references, estimates, [len(vocals)]))
    # Blocks that cut windows anywhere give the same windows.
    np.testing.assert_allclose(_framewise(references, estimates, [7001, 20000, 333, 16000]), fast, rtol=0, atol=1e-9)
    assert fast.shape == expected.shape == (3, 2, len(vocals) // 16000)
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(expected))
    assert np.isnan(fast[:, :, 1]).all() and not np.isnan(fast[:, :, 0]).any()
    np.testing.assert_allclose(fast, expected, rtol=0, atol=TOLERANCE_DB)


def _framewise(references, estimates, sizes):
    """FramewiseBss of 1 s windows fed in blocks of `sizes` (repeated to the end)."""
    frames = FramewiseBss(2, 16000, 16000)
    start, k = 0, 0
    while start < references.shape[-1]:
        size = sizes[k % len(sizes)]
        frames.push(references[:, start : start + size], estimates[..., start : start + size])
        start, k = start + size, k + 1
    return frames.finish()


def test_blocks_of_any_size_score_as_the_whole_song_and_the_explicit_pass_streams(mir1k):
    """The same estimates pushed whole and in uneven blocks: the closed-form scores agree to
    rounding; the unprocessed mixture (whose SAR needs the explicit path) agrees when the second
    pass is fed the same blocks."""
    config, song = mir1k
    references = np.stack([song.vocals, song.accompaniment])
    estimates = np.stack([np.stack(separate_song(IdealBinaryMask(), song, config, 0.5)), np.stack([song.mixture, song.mixture])])
    whole = np.array(bss_eval(references, estimates))
    sizes = [1, 9000, 7681, 300, 25000]
    stream = StreamingBss(2)
    starts = np.cumsum([0, *sizes * 20])
    blocks = [(a, b) for a, b in itertools.pairwise(starts) if a < references.shape[-1]]
    for a, b in blocks:
        stream.push(references[:, a:b], estimates[..., a:b])
    streamed = np.array(stream.finish())
    assert stream.cancelled[1].all() and not stream.cancelled[0].any()
    explicit = stream.explicit([(1, 0), (1, 1)])
    for a, b in blocks:
        explicit.push(references[:, a:b], estimates[..., a:b])
    for j, values in enumerate(explicit.finish()):
        streamed[:, 1, j] = values
    np.testing.assert_allclose(streamed[:, 0], whole[:, 0], rtol=0, atol=TOLERANCE_DB)
    np.testing.assert_allclose(streamed[:2, 1], whole[:2, 1], rtol=0, atol=TOLERANCE_DB)
    assert (streamed[2, 1] > 150).all()


def test_mismatched_estimates_are_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="do not match"):
        bss_eval(rng.standard_normal((2, 4000)), rng.standard_normal((2, 3999)))
    stream = StreamingBss(2)
    stream.push(rng.standard_normal((2, 100)), rng.standard_normal((3, 2, 100)))
    with pytest.raises(ValueError, match="do not match"):
        stream.push(rng.standard_normal((2, 100)), rng.standard_normal((2, 2, 100)))
