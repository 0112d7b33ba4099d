"""Inference (Eq. 1 with unfold/fold, streamed) and `karaoke separate` on files of any kind."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import small_config_dict

from karaoke.config import config_from_dict
from karaoke.inference import StreamingSoftMask, soft_mask
from karaoke.masks import masks_to_audio, sliding_windows
from karaoke.models.dnn import build_model, save_dnn
from karaoke.separate import discard_separation, partial_file, separate_audio, separate_file
from karaoke.spectral import stft
from tests.reference import overlap_average

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return config_from_dict(small_config_dict(str(tmp_path_factory.mktemp("unused"))))


@pytest.fixture(scope="module")
def model(config):
    """An untrained network with spread-out output biases, so its masks are neither all 0 nor all 1."""
    torch.manual_seed(0)
    net = build_model(config).eval()
    with torch.no_grad():
        net.net[2].bias.normal_(0.0, 3.0)
    return net


@pytest.fixture(scope="module")
def checkpoint(model, config, tmp_path_factory):
    return save_dnn(tmp_path_factory.mktemp("ckpt") / "dnn", model, config, 1, {"train_loss": 0.1})


def _reference_mask(model, magnitude, window_frames):
    """Eq. 1 the slow way: every hop-1 window through the network, averaged by `masks.overlap_average`."""
    with torch.no_grad():
        windows = torch.from_numpy(np.ascontiguousarray(sliding_windows(magnitude, window_frames)))
        return overlap_average(model(windows).numpy())


def test_soft_mask_is_eq1_average_of_hop1_windows(model):
    magnitude = np.random.default_rng(0).random((257, 75)).astype(np.float32)
    expected = _reference_mask(model, magnitude, 20)
    for batch_windows in (1, 7, 1000):
        got = soft_mask(model, magnitude, 20, scale=1.0, batch_windows=batch_windows)
        assert got.shape == (257, 75)
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_streamed_blocks_of_any_size_give_the_same_mask(model):
    magnitude = np.random.default_rng(1).random((257, 61)).astype(np.float32) * 5.0
    whole = soft_mask(model, magnitude, 20)  # scale: the maximum, 5 at most
    stream = StreamingSoftMask(model, 20, float(magnitude.max()), batch_windows=5)
    parts, start = [], 0
    for size in (1, 3, 19, 2, 30, 6):
        parts.append(stream.push(magnitude[:, start : start + size]))
        start += size
    parts.append(stream.finish())
    assert sum(p.shape[-1] for p in parts) == 61
    np.testing.assert_allclose(torch.cat(parts, -1).numpy(), whole, atol=1e-6)


def test_bfloat16_inference_stays_close_to_float32(model):
    magnitude = np.random.default_rng(6).random((257, 40)).astype(np.float32)
    exact = soft_mask(model, magnitude, 20)
    stream = StreamingSoftMask(model, 20, float(magnitude.max()), precision="bfloat16")
    fast = torch.cat([stream.push(magnitude), stream.finish()], -1).numpy()
    assert 0 < np.abs(fast - exact).max() < 0.05


def test_song_shorter_than_one_window_is_padded_then_cropped(model):
    magnitude = np.random.default_rng(2).random((257, 7)).astype(np.float32)
    with torch.no_grad():
        padded = torch.from_numpy(np.pad(magnitude, ((0, 0), (0, 13))))[None]
        expected = model(padded)[0, :, :7].numpy()
    np.testing.assert_allclose(soft_mask(model, magnitude, 20, scale=1.0), expected, atol=1e-6)


def test_separate_audio_matches_whole_song_stft_path_and_keeps_stereo(model, config):
    audio = (np.random.default_rng(3).standard_normal((2, 16000 * 2 + 123)) * 0.1).astype(np.float32)
    result = separate_audio(model, audio, config, alpha=0.5, chunk_samples=3001)
    mono = stft(audio.mean(0), config.stft)
    probability = soft_mask(model, np.abs(mono), 20)
    vocals, accompaniment = masks_to_audio(stft(audio, config.stft), probability, 0.5, config.stft, audio.shape[-1])
    assert result.vocals.shape == result.accompaniment.shape == audio.shape
    np.testing.assert_allclose(result.probability, probability, atol=1e-5)
    np.testing.assert_allclose(result.vocals, vocals, atol=1e-5)
    np.testing.assert_allclose(result.accompaniment, accompaniment, atol=1e-5)
    # p is between alpha and 1 - alpha somewhere, so the two estimates do not simply sum to the mixture
    assert 0.0 < (probability > 0.5).mean() < 1.0


def test_chunked_separation_of_a_long_file_equals_unchunked(model, config, tmp_path):
    rng = np.random.default_rng(4)
    seconds, rate = 40, 22050
    t = np.arange(seconds * rate) / rate
    tones = 0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 0.3 * t) > 0)
    audio = np.stack([tones + 0.05 * rng.standard_normal(t.size), 0.5 * tones]).astype(np.float32)
    sf.write(tmp_path / "long.flac", audio.T, rate)
    whole = separate_file(tmp_path / "long.flac", tmp_path / "whole", model, config, "binary", 0.5, chunk_seconds=1000)
    chunked = separate_file(tmp_path / "long.flac", tmp_path / "chunked", model, config, "binary", 0.5, chunk_seconds=1.7)
    for name in ("vocals", "accompaniment"):
        a, rate_a = sf.read(whole / f"{name}.wav", dtype="float32")
        b, rate_b = sf.read(chunked / f"{name}.wav", dtype="float32")
        # the input's rate, channels and length
        assert rate_a == rate_b == rate and a.shape == b.shape == (seconds * rate, 2)
        assert np.abs(a).max() > 0.01
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert sorted(p.name for p in chunked.iterdir()) == ["accompaniment.wav", "vocals.wav"]


def test_cli_separates_a_folder_of_mono_and_stereo_files_at_any_rate(checkpoint, tmp_path):
    from karaoke_cli.main import main

    songs = tmp_path / "songs"
    songs.mkdir()
    rng = np.random.default_rng(5)
    sf.write(songs / "mono8k.wav", rng.standard_normal(8000 * 2).astype(np.float32) * 0.1, 8000)
    sf.write(songs / "stereo44k.flac", rng.standard_normal((44100 * 3, 2)).astype(np.float32) * 0.1, 44100)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["separate", str(songs), "--model", str(checkpoint), "--alpha", "0.6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    folder = out / "test-dnn"  # the config's name and the checkpoint folder's
    for name, channels, rate, seconds in (("mono8k", 1, 8000, 2), ("stereo44k", 2, 44100, 3)):
        for part in ("vocals", "accompaniment"):
            info = sf.info(folder / name / f"{part}.wav")
            assert (info.channels, info.samplerate, info.frames) == (channels, rate, seconds * rate)
    assert (folder / "config.yaml").is_file()


@pytest.mark.parametrize(
    "args, message",
    [(["--alpha", "1.0"], "is not a finite number strictly between 0 and 1"), ([], "cannot decode audio")],
)
def test_cli_errors_name_the_problem(checkpoint, tmp_path, args, message):
    from karaoke_cli.main import main

    bad = tmp_path / "notaudio.wav"
    bad.write_bytes(b"this is not a wav file")
    result = CliRunner().invoke(main, ["separate", str(bad), "--model", str(checkpoint), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code != 0
    assert message in result.output + str(result.exception)


@pytest.mark.slow
def test_briefly_trained_model_beats_the_mixture_on_a_real_mir1k_clip(mir1k_root):
    from karaoke.corpora import list_songs
    from karaoke.features import song_features, training_rows
    from karaoke.metrics import bss_eval_mir_eval
    from karaoke.models.dnn import make_loss, make_optimizer, train_epoch

    config = config_from_dict(
        {
            "corpus": {"layout": "mir1k", "root": str(mir1k_root), "sample_rate": 16000, "mixing": "sum"},
            "stft": {"n_fft": 512, "hop_length": 128},
            "windows": {"n_frames": 20, "train_hop": 5},
            "dnn": {"hidden_sizes": [256]},
            "train": {"loss": "bce", "optimizer": "adam", "learning_rate": 1e-3},
        }
    )
    parts = [training_rows(song_features(s.load(16000, "sum"), config), config) for s in list_songs(config.corpus, "train")[:12]]
    rows = {k: np.concatenate([p[k] for p in parts]) for k in ("mixture", "ibm")}
    torch.manual_seed(0)
    model = build_model(config)
    optimizer, loss_fn = make_optimizer(model, config.train), make_loss(config.train)
    rng = np.random.default_rng(0)
    for _ in range(8):
        order = rng.permutation(len(rows["mixture"]))
        batches = ({k: torch.from_numpy(v[order[i : i + 32]]) for k, v in rows.items()} for i in range(0, len(order), 32))
        train_epoch(model, batches, optimizer, loss_fn, torch.device("cpu"))
    model.eval()

    song = list_songs(config.corpus, "valid")[0].load(16000, "sum")  # a singer never trained on
    # A briefly trained network is unsure about vocals (its mean p is below the IBM's vocal share), so
    # the low end of the paper's alpha grid is where its vocal mask is useful.
    result = separate_audio(model, song.mixture, config, alpha=0.2)
    references = np.stack([song.vocals, song.accompaniment])
    separated = bss_eval_mir_eval(references, np.stack([result.vocals, result.accompaniment]))
    unprocessed = bss_eval_mir_eval(references, np.stack([song.mixture, song.mixture]))
    assert separated.sdr[0] > unprocessed.sdr[0]
    assert separated.sdr.mean() > unprocessed.sdr.mean()


def test_what_a_killed_separation_left_is_discarded_and_nothing_else(s3_endpoint, tmp_path):
    """A replica killed mid-song leaves partial files (a local folder) or one of the two files (an
    upload cut short); the song's reported failure removes them, and no other song's files."""
    import s3fs

    folder = tmp_path / "mir1k"
    for track in ("live/hifi", "done"):
        (folder / track).mkdir(parents=True)
    partial_file(folder / "live" / "hifi", "vocals.wav").write_bytes(b"half")
    for part in ("vocals", "accompaniment"):
        (folder / "done" / f"{part}.wav").write_bytes(b"whole")
    discard_separation(folder, "live/hifi", "wav")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["done", "done/accompaniment.wav", "done/vocals.wav"]

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.pipe({"test-bucket/cut/mir1k/song/vocals.flac": b"one of two", "test-bucket/cut/mir1k/other/vocals.flac": b"kept"})
    discard_separation("s3://test-bucket/cut/mir1k", "song", "FLAC")
    fs.invalidate_cache()
    assert fs.find("test-bucket/cut") == ["test-bucket/cut/mir1k/other/vocals.flac"]
