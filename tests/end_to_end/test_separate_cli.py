"""`karaoke separate`, `export` and `models` as a user runs them: output layout, formats, batches
with bad files, the flags that would have no effect, and the default model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

import karaoke
from karaoke import model_store
from karaoke_cli.main import main

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)


def noise(path, rate, seconds, channels=1, seed=0):
    data = 0.1 * np.random.default_rng(seed).standard_normal((int(rate * seconds), channels)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data[:, 0] if channels == 1 else data, rate)
    return data


@pytest.fixture
def no_models(tmp_path, monkeypatch):
    monkeypatch.setenv("KARAOKE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(model_store, "shipped_folder", lambda: tmp_path / "shipped")


def test_version_and_the_commands_are_listed():
    done = subprocess.run([sys.executable, "-m", "karaoke_cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"karaoke, version {karaoke.__version__}"
    assert all(command in run("--help").output for command in ("separate", "export", "models"))


def test_inputs_sharing_a_name_get_their_own_folders_under_the_default_out(exported_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = noise(tmp_path / "a" / "song.wav", 44100, 1.2, channels=2)
    noise(tmp_path / "b" / "song.wav", 22050, 0.8, seed=1)
    result = run("separate", "a/song.wav", "b/song.wav", "-m", exported_model)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "separated" / "tiny"
    for track, rate, shape in (("a/song", 44100, a.shape), ("b/song", 22050, (int(22050 * 0.8),))):
        for part in ("vocals", "accompaniment"):
            data, file_rate = sf.read(folder / track / f"{part}.wav", dtype="float32")
            assert file_rate == rate and data.shape == shape  # the input's rate, channels and length
            assert sf.info(folder / track / f"{part}.wav").subtype == "FLOAT"
    assert (folder / "config.yaml").is_file()
    assert "separated 2 of 2 files into separated/tiny" in result.output


@pytest.mark.parametrize(
    "flags, extension, subtype",
    [(["--format", "flac"], "flac", "PCM_24"), (["--format", "flac", "--bit-depth", "16"], "flac", "PCM_16"),
     (["--bit-depth", "24"], "wav", "PCM_24"), (["--format", "mp3"], "mp3", "MPEG_LAYER_III")],
)
def test_format_and_bit_depth(exported_model, tmp_path, flags, extension, subtype):
    noise(tmp_path / "song.flac", 44100, 1.0, channels=2)
    result = run("separate", tmp_path / "song.flac", "-m", exported_model, "-o", tmp_path / "out", "-d", "cpu", *flags)
    assert result.exit_code == 0, result.output
    info = sf.info(tmp_path / "out" / "tiny" / "song" / f"vocals.{extension}")
    assert (info.subtype, info.samplerate, info.channels) == (subtype, 44100, 2)


@pytest.mark.parametrize(
    "flags, message",
    [(["--format", "flac", "--bit-depth", "32f"], "--bit-depth 32f: FLAC holds integer samples only; use --bit-depth 24 or --format wav"),
     (["--format", "mp3", "--bit-depth", "16"], "--bit-depth has no effect with --format mp3 (MP3 is lossy, it has no bit depth); leave it out"),
     (["--alpha", "0.3"], "--alpha has no effect with soft masks (p and 1 - p are applied as they are); leave it out, or add --mask binary")],
)
def test_a_flag_that_would_have_no_effect_is_a_one_line_error(exported_model, tmp_path, flags, message):
    noise(tmp_path / "song.wav", 16000, 1.0)
    result = run("separate", tmp_path / "song.wav", "-m", exported_model, "-o", tmp_path / "out", *flags)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "out").exists()


def test_binary_masks_take_alpha(exported_model, tmp_path):
    noise(tmp_path / "song.wav", 16000, 1.0)
    energies = []
    for alpha in ("0.2", "0.8"):
        out = tmp_path / alpha
        result = run("separate", tmp_path / "song.wav", "-m", exported_model, "-o", out, "--mask", "binary", "--alpha", alpha)
        assert result.exit_code == 0, result.output
        energies.append(np.sum(sf.read(out / "tiny" / "song" / "vocals.wav")[0] ** 2))
    assert energies[1] < energies[0]  # Eq. 2: a higher alpha keeps fewer vocal bins


def test_a_batch_reports_and_skips_each_bad_file_and_writes_the_others(exported_model, tmp_path):
    songs = tmp_path / "songs"
    noise(songs / "good.wav", 16000, 1.0)
    noise(songs / "live" / "also_good.flac", 44100, 0.5, channels=2)
    cut = songs / "cut.wav"
    noise(cut, 16000, 2.0)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    (songs / "junk.mp3").write_bytes(b"not audio at all")
    out = tmp_path / "out"
    result = run("separate", songs, "-m", exported_model, "-o", out)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert f"failed: {cut}: truncated audio: the header promises" in result.output
    assert any(line.startswith(f"failed: {songs / 'junk.mp3'}: cannot decode audio") for line in lines)
    assert lines[-1] == f"separated 2 of 4 files into {out / 'tiny'}; 2 failed (listed above)"
    assert sorted(p.relative_to(out / "tiny").as_posix() for p in (out / "tiny").rglob("*") if p.is_file()) == [
        "config.yaml", "good/accompaniment.wav", "good/vocals.wav",
        "live/also_good/accompaniment.wav", "live/also_good/vocals.wav",
    ]
    assert not (out / "tiny" / "cut").exists() and not (out / "tiny" / "junk").exists()


def test_without_a_model_the_missing_default_is_a_one_line_error(no_models, tmp_path):
    noise(tmp_path / "song.wav", 16000, 1.0)
    result = run("separate", tmp_path / "song.wav", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.startswith("error: the default model 'mir1k' is not installed")
    assert "pass --model RUN/dnn" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_export_then_separate_by_name_and_list_the_models(exported_model, no_models, tmp_path):
    run_dir = exported_model.parent.parent / "run"
    result = run("export", run_dir, "--name", "mine", "--out", tmp_path / "shipped", "--description", "my own model")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {tmp_path / 'shipped' / 'mine'}"
    assert run("models").output.strip() == "mine\tshipped\tmy own model"
    noise(tmp_path / "song.wav", 16000, 1.0)
    result = run("separate", tmp_path / "song.wav", "-m", "mine", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "mine" / "song" / "vocals.wav").is_file()
    again = run("export", run_dir, "--name", "mine", "--out", tmp_path / "shipped")
    assert again.exit_code == 2 and "already exists; remove it or choose another --name or --out" in again.output
