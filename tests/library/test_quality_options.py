"""The options beyond the paper measured on MIR-1K (README "MIR-1K results"): soft masks, log-compressed
input, remix augmentation (pitch-shifted too), dropout; the magnitude-weighted loss and the cosine rate
are tested in test_dnn.py. Each defaults to the paper's behaviour."""

import numpy as np
import pytest
import torch

from karaoke.config import config_from_dict
from karaoke.features import (
    remix,
    remix_partners,
    song_features,
    song_training_rows,
    training_rows,
)
from karaoke.masks import alpha_masks, masks_to_audio
from karaoke.mixing import MixedSong
from karaoke.models.dnn import build_model
from karaoke.spectral import stft


def _config(**sections):
    base = {"stft": {"n_fft": 256, "hop_length": 64}, "windows": {"n_frames": 8, "train_hop": 4}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return config_from_dict(base)


def _song(song_id: str, seconds: float, seed: int) -> MixedSong:
    rng = np.random.default_rng(seed)
    n = int(seconds * 8000)
    vocals = (0.3 * rng.standard_normal(n)).astype(np.float32)
    accompaniment = (0.5 * rng.standard_normal(n)).astype(np.float32)
    return MixedSong(song_id, "train", 8000, vocals + accompaniment, vocals, accompaniment)


def test_defaults_are_the_papers():
    config = config_from_dict({})
    assert config.evaluation.mask == "binary"
    assert config.dnn.log_input_gain == 0.0
    assert config.windows.remixes == 0
    assert config.train.bin_weight_power == 0.0
    assert config.train.lr_schedule == "constant"
    assert config.windows.remix_pitch_semitones == 0.0 and config.dnn.dropout == 0.0


def test_soft_masks_are_p_and_its_complement_whatever_alpha():
    p = np.array([[0.05, 0.3, 0.5, 0.7, 0.95]], dtype=np.float32)
    for alpha in (0.1, 0.5, 0.9):
        vocal, accompaniment = alpha_masks(p, alpha, "soft")
        assert np.allclose(vocal, p) and np.allclose(accompaniment, 1 - p)
    binary_vocal, binary_accompaniment = alpha_masks(p, 0.4)
    assert binary_vocal.tolist() == [[False, False, True, True, True]]
    assert binary_accompaniment.tolist() == [[True, True, True, False, False]]
    # The same rule on torch tensors (the streaming separation's type).
    torch_vocal, torch_accompaniment = alpha_masks(torch.from_numpy(p), 0.4, "soft")
    assert np.allclose(torch_vocal.numpy(), p) and np.allclose(torch_accompaniment.numpy(), 1 - p)
    with pytest.raises(ValueError, match="mask mode"):
        alpha_masks(p, 0.4, "ratio")
    with pytest.raises(ValueError, match="alpha"):
        alpha_masks(p, 1.0, "soft")


def test_soft_masks_sum_to_the_mixture():
    config = _config()
    song = _song("a_1_01", 1.0, 0)
    mixture_stft = stft(song.mixture, config.stft)
    p = np.random.default_rng(1).uniform(0, 1, mixture_stft.shape).astype(np.float32)
    vocals, accompaniment = masks_to_audio(mixture_stft, p, 0.5, config.stft, len(song.mixture), "soft")
    assert np.max(np.abs(vocals + accompaniment - song.mixture)) < 1e-5
    binary_vocals, binary_accompaniment = masks_to_audio(mixture_stft, p, 0.5, config.stft, len(song.mixture))
    assert np.max(np.abs(binary_vocals + binary_accompaniment - song.mixture)) < 1e-5  # complementary at 0.5
    assert np.max(np.abs(binary_vocals - vocals)) > 1e-3


def test_log_input_gain_compresses_the_input_and_zero_is_the_paper():
    torch.manual_seed(0)
    paper = build_model(_config(dnn={"hidden_sizes": [16], "bias_offset": 0.0}))
    torch.manual_seed(0)
    logged = build_model(_config(dnn={"hidden_sizes": [16], "bias_offset": 0.0, "log_input_gain": 100.0}))
    x = torch.rand(3, 129, 8) * 0.01
    compressed = torch.log1p(100 * x) / np.log1p(100)
    assert torch.allclose(logged(x), paper(compressed), atol=1e-6)
    assert not torch.allclose(logged(x), paper(x), atol=1e-4)
    assert torch.allclose(logged(torch.ones(1, 129, 8)), paper(torch.ones(1, 129, 8)), atol=1e-6)  # 1 -> 1


def test_remix_puts_the_voice_at_a_bounded_gain_over_a_stretch_of_the_partner():
    config = _config(windows={"remixes": 3, "remix_gain_db": 6.0})
    song, partner = _song("a_1_01", 2.0, 0), _song("b_2_02", 0.7, 1)  # the partner is shorter: looped
    mixed = remix(song, partner, 0, config)
    assert mixed.song_id == "a_1_01+b_2_02" and len(mixed.mixture) == len(song.mixture)
    assert np.allclose(mixed.mixture, mixed.vocals + mixed.accompaniment)
    gain = float(np.dot(mixed.vocals, song.vocals) / np.dot(song.vocals, song.vocals))
    assert 10 ** (-6 / 20) - 1e-6 <= gain <= 10 ** (6 / 20) + 1e-6
    looped = np.tile(partner.accompaniment, 5)
    start = int(np.flatnonzero(np.isclose(looped, mixed.accompaniment[0]))[0])
    assert np.array_equal(mixed.accompaniment, looped[start : start + len(song.mixture)])
    # Seeded by the song id and the remix index: reruns agree, remixes differ.
    assert np.array_equal(remix(song, partner, 0, config).mixture, mixed.mixture)
    assert not np.allclose(remix(song, partner, 1, config).vocals, mixed.vocals)


def test_remix_pitch_shift_moves_the_voice_within_its_bound_and_keeps_the_sum():
    rate, seconds = 8000, 2.0
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    song = MixedSong("a_1_01", "train", rate, tone, tone, np.zeros_like(tone))
    partner = _song("b_2_02", 0.7, 1)
    config = _config(windows={"remixes": 4, "remix_gain_db": 0.0, "remix_pitch_semitones": 3.0})
    shifts = []
    for index in range(4):
        mixed = remix(song, partner, index, config)
        assert np.allclose(mixed.mixture, mixed.vocals + mixed.accompaniment)
        spectrum = np.abs(np.fft.rfft(mixed.vocals))
        semitones = 12 * np.log2(np.argmax(spectrum) * rate / len(mixed.vocals) / 440)
        # resampling: s semitones higher is 2^(-s/12) as long
        assert len(mixed.vocals) == pytest.approx(len(tone) * 2 ** (-semitones / 12), rel=0.01)
        shifts.append(semitones)
    assert all(abs(s) <= 3.05 for s in shifts) and np.ptp(shifts) > 0.5
    assert np.array_equal(remix(song, partner, 2, config).vocals, remix(song, partner, 2, config).vocals)
    # Off (the default), the voice is the song's own, at its length.
    assert len(remix(song, partner, 0, _config(windows={"remixes": 1})).vocals) == len(tone)


def test_dropout_acts_while_training_only():
    x = torch.rand(4, 129, 8)
    plain = build_model(_config(dnn={"hidden_sizes": [32]}))
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())
    model = build_model(_config(dnn={"hidden_sizes": [32], "dropout": 0.5}))
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_remix_partners_are_other_songs_and_stable():
    config = _config(windows={"remixes": 4})
    ids = ["a_1_01", "a_1_02", "b_2_01"]
    partners = remix_partners("a_1_01", ids, config)
    assert len(partners) == 4 and "a_1_01" not in partners and set(partners) <= set(ids)
    assert remix_partners("a_1_01", list(reversed(ids)), config) == partners
    assert remix_partners("a_1_01", ["a_1_01"], config) == []
    assert remix_partners("a_1_01", ids, _config()) == []


def test_song_training_rows_add_the_remixed_windows_after_the_songs_own():
    config = _config(windows={"remixes": 2})
    song, partners = _song("a_1_01", 1.0, 0), [_song("b_2_02", 1.5, 1), _song("c_3_03", 0.5, 2)]
    own = training_rows(song_features(song, config), config)
    rows = song_training_rows(song, song_features(song, config), config, partners)
    n = len(own["start_frame"])
    assert np.array_equal(rows["remix"], np.repeat([0, 1, 2], n))
    for key in own:
        assert np.array_equal(rows[key][:n], own[key])
        assert rows[key].shape[1:] == own[key].shape[1:]
    assert not np.array_equal(rows["mixture"][n : 2 * n], own["mixture"])
    plain = song_training_rows(song, song_features(song, _config()), _config())
    assert np.array_equal(plain["mixture"], own["mixture"]) and not plain["remix"].any()


def test_prepare_song_writes_the_remixed_windows_of_training_songs_only(tmp_path, synth_root):
    from karaoke.corpora import list_songs
    from karaoke.dataset import read_windows
    from karaoke.preparation import prepare_song, remix_partner_songs, write_manifest
    from tests.conftest import small_config_dict

    config = config_from_dict(small_config_dict(str(synth_root), windows={"remixes": 2}))
    songs = list_songs(config.corpus)
    dataset = str(tmp_path / "ds")
    train_songs = [s for s in songs if s.split == "train"]
    statuses = [prepare_song(song, config, dataset, remix_partner_songs(song, train_songs, config)) for song in songs]
    write_manifest(dataset, config, statuses)
    train = train_songs[0]
    mixed = train.load(16000, config.corpus.mixing)
    partners = [p.load(16000, config.corpus.mixing) for p in remix_partner_songs(train, train_songs, config)]
    expected = song_training_rows(mixed, song_features(mixed, config), config, partners)
    windows = read_windows(dataset, "train", columns=["song_id", "mixture", "ibm"])
    mine = windows["song_id"] == train.song_id
    own = training_rows(song_features(mixed, config), config)
    assert mine.sum() == len(expected["mixture"]) == 3 * len(own["mixture"])
    np.testing.assert_allclose(windows["mixture"][mine], expected["mixture"], rtol=1e-3, atol=1e-4)  # float16 on disk
    np.testing.assert_array_equal(windows["ibm"][mine], expected["ibm"])
    test_song = next(s for s in songs if s.split == "test")
    assert remix_partner_songs(test_song, train_songs, config) == []
    n_test = len(training_rows(song_features(test_song.load(16000, config.corpus.mixing), config), config)["mixture"])
    assert len(read_windows(dataset, "test", columns=["song_id"])["song_id"]) == n_test
