"""`karaoke.Separator`: the Python API over a model, any input layout, the mask flags."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from karaoke.errors import AudioError, ConfigError

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_importing_karaoke_loads_nothing_heavy_until_separator_is_used():
    code = "import sys, karaoke; assert 'torch' not in sys.modules and 'numpy' not in sys.modules; print(karaoke.Separator.__module__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "karaoke.separator"


@pytest.fixture(scope="module")
def separator(exported_model):
    from karaoke import Separator

    return Separator.from_pretrained(exported_model, device="cpu")


def test_every_layout_comes_back_in_its_own_layout_with_the_same_separation(separator):
    rng = np.random.default_rng(0)
    stereo = (0.1 * rng.standard_normal((2, 22050))).astype(np.float32)  # (channels, n)
    first = separator.separate(stereo, 22050)
    last = separator.separate(stereo.T, 22050)  # soundfile's (n, channels)
    mono = separator.separate(stereo[0], 22050)
    assert first.vocals.shape == first.accompaniment.shape == (2, 22050)
    assert last.vocals.shape == (22050, 2) and mono.vocals.shape == (22050,)
    np.testing.assert_allclose(last.vocals, first.vocals.T, atol=1e-6)
    np.testing.assert_allclose(last.accompaniment, first.accompaniment.T, atol=1e-6)
    assert first.sample_rate == 22050 and first.probability.shape[0] == separator.config.stft.n_bins
    # soft masks (the model's): the probability is Eq. 1's p, and the estimates sum to the input
    assert separator.mask == "soft" and 0 <= first.probability.min() and first.probability.max() <= 1
    np.testing.assert_allclose(mono.vocals + mono.accompaniment, stereo[0], atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 4), (9, 20), (2, 3, 100)])
def test_a_shape_the_layout_rule_cannot_decide_is_refused(separator, shape):
    with pytest.raises(AudioError, match=r"give \(n_samples,\), \(n_channels, n_samples\) or \(n_samples, n_channels\)"):
        separator.separate(np.zeros(shape, np.float32), 16000)


def test_alpha_is_an_error_with_soft_masks_and_applies_with_binary_ones(exported_model, separator):
    from karaoke import Separator

    with pytest.raises(ConfigError, match="--alpha has no effect with soft masks"):
        Separator.from_pretrained(exported_model, device="cpu", alpha=0.3)
    audio = (0.1 * np.random.default_rng(1).standard_normal(16000)).astype(np.float32)
    strict = Separator(separator.model, separator.config, mask="binary", alpha=0.8).separate(audio, 16000)
    loose = Separator(separator.model, separator.config, mask="binary", alpha=0.2).separate(audio, 16000)
    # a higher alpha keeps fewer bins in the vocals (Eq. 2)
    assert np.sum(strict.vocals**2) < np.sum(loose.vocals**2)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(exported_model):
    from karaoke import Separator

    with pytest.raises(ConfigError, match="--device cuda: PyTorch sees no CUDA GPU here .*; use --device cpu"):
        Separator.from_pretrained(exported_model, device="cuda")
