import numpy as np
import pytest
import soundfile as sf

from karaoke.audio import read_audio, resample, to_mono, write_audio
from karaoke.errors import AudioError
from karaoke.mixing import mix_stems

SR = 16000


def tone(freq, n=SR, amp=0.5, channels=None):
    t = np.arange(n) / SR
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels is None else np.stack([x * (c + 1) / channels for c in range(channels)])


def test_write_read_round_trip_wav_and_flac(tmp_path):
    stereo = tone(440, channels=2)
    write_audio(tmp_path / "a.wav", stereo, SR)
    write_audio(tmp_path / "a.flac", stereo, SR)
    wav, rate = read_audio(tmp_path / "a.wav")
    flac, _ = read_audio(tmp_path / "a.flac")
    assert rate == SR and wav.shape == (2, SR)
    assert np.array_equal(wav, stereo)  # float WAV is exact
    assert np.max(np.abs(flac - stereo)) < 1e-6  # 24-bit FLAC
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(AudioError, match="FLAC would clip"):
        write_audio(tmp_path / "loud.flac", stereo * 3, SR)


def test_resample_keeps_a_tone(tmp_path):
    write_audio(tmp_path / "t.wav", 0.5 * np.sin(2 * np.pi * 1000 * np.arange(44100) / 44100), 44100)
    audio, rate = read_audio(tmp_path / "t.wav", sample_rate=SR)
    assert rate == SR and audio.shape == (1, SR)
    spectrum = np.abs(np.fft.rfft(audio[0]))
    assert np.argmax(spectrum) == pytest.approx(1000, abs=1)
    assert resample(audio, SR, SR) is audio
    assert to_mono(tone(100, channels=2)).shape == (SR,)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "cannot decode"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 10), "cannot decode"),
        (lambda p: sf.write(p, np.zeros((0, 1), dtype=np.float32), SR), "empty"),
        (lambda p: sf.write(p, np.array([0.1, np.nan, 0.2], dtype=np.float32), SR, subtype="FLOAT"), "NaN or Inf"),
        (lambda p: sf.write(p, np.array([0.1, np.inf, 0.2], dtype=np.float32), SR, subtype="FLOAT"), "NaN or Inf"),
    ],
)
def test_bad_audio_names_the_file(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=message) as info:
        read_audio(path)
    assert str(path) in str(info.value)


def test_truncated_wav_is_refused(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, tone(300), SR, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="cut.wav: truncated"):
        read_audio(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(AudioError, match="nothere.wav: audio file not found"):
        read_audio(tmp_path / "nothere.wav")


def test_paper_mixing_peak_normalises_and_keeps_exact_references():
    vocals = [("v1.wav", tone(300, amp=0.1)), ("v2.wav", tone(500, amp=0.7, channels=2))]
    others = [("drums.wav", tone(60, amp=0.9)), ("bass.wav", tone(110, amp=0.05))]
    mixture, voc, acc = mix_stems(vocals, others, mode="paper")
    assert np.max(np.abs(voc)) == pytest.approx(1.0) and np.max(np.abs(acc)) == pytest.approx(1.0)
    assert np.array_equal(mixture, voc + acc)
    assert mixture.dtype == voc.dtype == np.float32
    # each stem was normalised before summing: a quiet stem counts as much as a loud one
    stereo_mono = to_mono(vocals[1][1])
    expected = tone(300, amp=1.0) + stereo_mono / np.max(np.abs(stereo_mono))
    assert np.allclose(voc, expected / np.max(np.abs(expected)), atol=1e-5)


def test_sum_mixing_keeps_levels():
    mixture, voc, acc = mix_stems([("v", tone(300, amp=0.2))], [("a", tone(100, amp=0.4))], mode="sum")
    assert np.max(np.abs(voc)) == pytest.approx(0.2, rel=1e-3)
    assert np.array_equal(mixture, voc + acc)


def test_bad_stems_are_named():
    with pytest.raises(AudioError, match="quiet.wav: stem is silent"):
        mix_stems([("v.wav", tone(300))], [("quiet.wav", np.zeros(SR, dtype=np.float32))])
    with pytest.raises(AudioError, match="short.wav: stem has 100 samples"):
        mix_stems([("v.wav", tone(300))], [("short.wav", tone(100)[:100])])
    with pytest.raises(AudioError, match="song7: song has no vocal stem"):
        mix_stems([], [("a.wav", tone(100))], song_id="song7")
    with pytest.raises(AudioError, match="vocal signal is silent"):
        mix_stems([("v.wav", np.zeros(SR, dtype=np.float32))], [("a.wav", tone(100))], mode="sum")
