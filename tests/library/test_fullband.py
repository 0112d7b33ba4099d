"""Full-band output (karaoke.fullband, karaoke.separate): the model-rate mask on the input-rate STFT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from karaoke.config import StftConfig
from karaoke.fullband import MaskGrid, input_stft
from karaoke.separate import separate_audio, separate_stream
from karaoke.spectral import stft

pytestmark = pytest.mark.usefixtures("torch_one_thread")

MODEL_STFT = StftConfig(n_fft=512, hop_length=128)  # 257 bins up to 8 kHz at 16 kHz


def _mapped(grid: MaskGrid, probability: torch.Tensor, n_input_frames: int, block: int) -> torch.Tensor:
    """p on the input grid, pushing the model's frames `block` at a time."""
    parts = []
    for start in range(0, probability.shape[-1], block):
        grid.push(probability[:, start : start + block])
        parts.append(grid.take(n_input_frames - sum(p.shape[-1] for p in parts)))
    grid.finish()
    parts.append(grid.take(n_input_frames - sum(p.shape[-1] for p in parts)))
    return torch.cat(parts, -1)


def test_the_input_stft_spans_the_models_window_and_hop_in_time():
    assert input_stft(MODEL_STFT, 16000, 16000) == MODEL_STFT
    assert input_stft(MODEL_STFT, 16000, 44100) == StftConfig(n_fft=1412, hop_length=353)
    assert input_stft(StftConfig(n_fft=1024, hop_length=256), 16000, 44100) == StftConfig(n_fft=2822, hop_length=706)


def test_equal_rates_map_the_mask_unchanged_in_blocks_of_any_size():
    probability = torch.rand(257, 50, generator=torch.Generator().manual_seed(0))
    for block in (1, 7, 50):
        grid = MaskGrid(MODEL_STFT, 16000, 16000, torch.device("cpu"))
        torch.testing.assert_close(_mapped(grid, probability, 50, block), probability, rtol=0, atol=0)


def test_the_mask_is_interpolated_linearly_and_the_high_band_follows_its_rule():
    # p = a + b * (frequency in Hz) + c * (time in s) is linear, so interpolation reproduces it exactly.
    model_rate, input_rate, n_model_frames = 16000, 44100, 40
    hz = torch.arange(257, dtype=torch.float64) * model_rate / 512
    seconds = torch.arange(n_model_frames, dtype=torch.float64) * 128 / model_rate
    probability = (0.1 + 0.5 * hz[:, None] / 8000 + 0.3 * seconds[None] / seconds[-1]).float()
    in_stft = input_stft(MODEL_STFT, model_rate, input_rate)
    n_input_frames = 1 + (n_model_frames - 1) * 128 * input_rate // (model_rate * in_stft.hop_length)
    in_hz = torch.arange(in_stft.n_bins, dtype=torch.float64) * input_rate / in_stft.n_fft
    in_seconds = torch.arange(n_input_frames, dtype=torch.float64) * in_stft.hop_length / input_rate
    in_time = 0.3 * in_seconds[None] / seconds[-1]
    expected = 0.1 + 0.5 * in_hz.clamp(max=8000)[:, None] / 8000 + in_time
    inside = in_hz <= 8000
    # above the model's 8 kHz, per frame: p at 8 kHz, or p's mean over 4-8 kHz (at 6 kHz, p being
    # linear), that mean fading along a raised cosine to 0 an octave up, or no vocals at all
    octave = 0.1 + 0.5 * 6000 / 8000 + in_time
    fade = torch.where(in_hz < 16000, torch.cos(torch.pi / 2 * torch.log2(in_hz.clamp(min=8000) / 8000)) ** 2, 0)[:, None]
    high = {"top_bin": 0.1 + 0.5 + in_time + 0 * in_hz[:, None], "top_octave": octave + 0 * in_hz[:, None],
            "taper": octave * fade, "accompaniment": torch.zeros_like(expected)}
    for rule, values in high.items():
        grid = MaskGrid(MODEL_STFT, model_rate, input_rate, torch.device("cpu"), high_band=rule)
        mapped = _mapped(grid, probability, n_input_frames, block=3).double()
        assert mapped.shape == (in_stft.n_bins, n_input_frames)
        torch.testing.assert_close(mapped[inside], expected[inside], rtol=0, atol=1e-5)
        torch.testing.assert_close(mapped[~inside], values[~inside], rtol=0, atol=1e-5)


def _tone(frequency: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.sin(2 * np.pi * frequency * t)


@pytest.fixture(scope="module")
def tiny(exported_model):
    from karaoke.models.dnn import load_dnn

    model, config, _ = load_dnn(exported_model)
    return model, config


def test_a_44k_stereo_song_comes_back_at_44k_full_band_and_exactly_its_length(tiny):
    model, config = tiny
    rate = 44100
    rng = np.random.default_rng(0)
    # a 12 kHz tone lies above the 16 kHz model's band: it must still be in the output
    audio = np.stack([0.3 * _tone(440, rate, 2.3) + 0.2 * _tone(12000, rate, 2.3), 0.1 * rng.standard_normal(int(rate * 2.3))])
    audio = audio[:, : rate * 2 + 1234].astype(np.float32)
    result = separate_audio(model, audio, config, sample_rate=rate, mask="soft", chunk_samples=7001)
    assert result.sample_rate == rate and result.vocals.shape == result.accompaniment.shape == audio.shape
    # soft masks p and 1 - p partition the full-band mixture
    np.testing.assert_allclose(result.vocals + result.accompaniment, audio, atol=1e-5)
    spectrum = np.abs(np.fft.rfft(result.accompaniment[0]))
    bin_12k = round(12000 * audio.shape[-1] / rate)
    assert spectrum[bin_12k - 2 : bin_12k + 3].max() > 0.1 * np.abs(np.fft.rfft(audio[0]))[bin_12k - 2 : bin_12k + 3].max()
    whole = separate_audio(model, audio, config, sample_rate=rate, mask="soft")
    np.testing.assert_allclose(result.vocals, whole.vocals, atol=1e-5)  # chunked = whole
    # the mask comes from the model's rate: its grid is the model's STFT of the resampled mixture
    assert result.probability.shape == (config.stft.n_bins, 1 + round(audio.shape[-1] * 16000 / rate) // 128)


def test_the_accompaniment_rule_keeps_the_vocals_below_the_models_band(tiny):
    model, config = tiny
    rate = 44100
    audio = (0.2 * _tone(11000, rate, 1.5) + 0.2 * _tone(700, rate, 1.5)).astype(np.float32)[None]
    bands = {}
    for rule in ("top_octave", "accompaniment"):
        parts = list(separate_stream(model, config, lambda: [audio], rate, "soft", 0.5, high_band=rule))
        vocals = np.concatenate([v for v, _ in parts], -1)[0]
        spec = np.abs(stft(vocals, input_stft(config.stft, 16000, rate)))
        high = np.arange(spec.shape[0]) * rate / input_stft(config.stft, 16000, rate).n_fft > 8100
        bands[rule] = spec[high].sum() / spec.sum()
    assert bands["accompaniment"] < 1e-3 < bands["top_octave"]


def test_a_real_musdb_song_is_separated_at_its_own_rate_and_channels(tiny, musdb_root):
    from karaoke.audio import read_audio

    model, config = tiny
    mixture, rate = read_audio(next(musdb_root.iterdir()) / "mixture.flac")
    assert rate == 44100 and mixture.shape[0] == 2
    result = separate_audio(model, mixture, config, sample_rate=rate, mask="soft", chunk_samples=rate)
    assert result.vocals.shape == mixture.shape
    np.testing.assert_allclose(result.vocals + result.accompaniment, mixture, atol=1e-5)
    assert 0.01 < np.abs(result.vocals).max() and 0.01 < np.abs(result.accompaniment).max()
