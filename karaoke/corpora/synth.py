"""A deterministic synthetic multitrack corpus: the embedded default that needs no download.

Each song has a key, a tempo and a four-chord progression, and four stems:
- `vocals.wav`: a sung melody of syllables on chord tones, with glides between notes, delayed
  vibrato, pitch jitter, vowel formants that move from syllable to syllable, attack/release
  envelopes, fricative consonants, breaths, and pauses between phrases;
- `drums.wav` (kick, snare, hi-hat), `bass.wav` (plucked chord roots) and `chords.wav` (sustained
  triads with a soft attack).
Songs are written as a stems folder `OUT/{train,test}/<song>/`; song i depends only on (seed, i),
so a corpus with more songs extends a smaller one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from karaoke.audio import write_audio
from karaoke.storage import is_url

# (F1, F2, F3) in Hz and bandwidths of sung vowels (Peterson & Barney-like averages).
VOWELS = {
    "a": (800.0, 1200.0, 2600.0),
    "e": (450.0, 2000.0, 2650.0),
    "i": (300.0, 2300.0, 3000.0),
    "o": (480.0, 850.0, 2500.0),
    "u": (330.0, 800.0, 2350.0),
}
FORMANT_BANDWIDTHS = (80.0, 100.0, 140.0)
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 4))  # scale degrees of chord roots


def midi_hz(note: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * 2.0 ** ((np.asarray(note) - 69.0) / 12.0)


def _triad(key: int, degree: int) -> list[int]:
    """MIDI offsets of the diatonic triad on a scale degree."""
    return [key + MAJOR_SCALE[(degree + step) % 7] + 12 * ((degree + step) // 7) for step in (0, 2, 4)]


def _envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    a, r = min(attack, n // 2), min(release, n // 2)
    if a:
        env[:a] = np.linspace(0.0, 1.0, a)
    if r:
        env[n - r :] *= np.linspace(1.0, 0.0, r)
    return env


def _additive(f0: np.ndarray, sr: int, gains) -> np.ndarray:
    """Sum of harmonics k*f0(t) (below Nyquist) with per-harmonic gains gains(k, freq)."""
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros_like(f0)
    for k in range(1, int(0.45 * sr / max(f0.min(), 20.0)) + 1):
        freq = k * f0
        g = gains(k, freq) * (freq < 0.45 * sr)
        out += g * np.sin(k * phase)
    return out


def _formant_gain(freq: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """Sum of three resonances; formants is (3, n_samples) centre frequencies."""
    gain = np.zeros_like(freq)
    for i, bw in enumerate(FORMANT_BANDWIDTHS):
        gain += (1.0 / (1 + i)) / (1.0 + ((freq - formants[i]) / bw) ** 2)
    return gain


def _vocals(rng: np.random.Generator, sr: int, n: int, beat: float, key: int, chords: list[list[int]]) -> np.ndarray:
    f0 = np.full(n, midi_hz(key + 12))
    formants = np.tile(np.array(VOWELS["a"])[:, None], (1, n))
    amp = np.zeros(n)
    noise = np.zeros(n)
    bar = 4 * beat
    t = rng.uniform(0.5, 1.5) * beat
    note = key + 12 + rng.choice([0, 4, 7])
    while t < n / sr - beat:
        phrase_end = min(t + bar * rng.choice([1.0, 1.5, 2.0]), n / sr)
        while t < phrase_end - 0.25 * beat:
            length = beat * rng.choice([0.5, 1.0, 1.0, 1.5, 2.0])
            i0, i1 = int(t * sr), min(int((t + length) * sr), n)
            if i1 - i0 < sr // 20:
                break
            chord = chords[int(t / bar) % len(chords)]
            candidates = [c + 12 * o for c in chord for o in (0, 1) if 52 <= c + 12 * o <= 76]
            target = min(candidates, key=lambda c: abs(c - note) + rng.uniform(0, 6))
            glide = np.linspace(note, target, min(int(0.06 * sr), i1 - i0))
            contour = np.concatenate([glide, np.full(i1 - i0 - len(glide), float(target))])
            tt = np.arange(i1 - i0) / sr
            vibrato = 0.35 * np.clip(tt / 0.3 - 0.5, 0, 1) * np.sin(2 * np.pi * rng.uniform(5.0, 6.5) * tt)
            jitter = np.cumsum(rng.normal(0, 0.002, i1 - i0))
            f0[i0:i1] = midi_hz(contour + vibrato + np.clip(jitter, -0.15, 0.15))
            vowel = np.array(VOWELS[rng.choice(list(VOWELS))])
            prev = formants[:, max(i0 - 1, 0)]
            blend = np.clip(np.arange(i1 - i0) / (0.05 * sr), 0, 1)
            formants[:, i0:i1] = prev[:, None] * (1 - blend) + vowel[:, None] * blend
            amp[i0:i1] = rng.uniform(0.6, 1.0) * _envelope(i1 - i0, int(0.03 * sr), int(0.07 * sr))
            if rng.random() < 0.35:  # fricative consonant before the vowel
                m = min(int(0.05 * sr), i1 - i0)
                burst = np.diff(rng.normal(0, 1, m + 1)) * _envelope(m, m // 4, m // 2)
                noise[i0 : i0 + m] += 0.15 * burst
            note = target
            t += length
        if phrase_end < n / sr:  # breath in the pause before the next phrase
            b0 = int(phrase_end * sr)
            m = min(int(0.25 * sr), n - b0)
            noise[b0 : b0 + m] += 0.02 * rng.normal(0, 1, m) * _envelope(m, m // 2, m // 2)
        t = phrase_end + beat * rng.choice([1.0, 2.0, 3.0])
        f0[int(min(phrase_end, n / sr) * sr) :] = f0[max(int(min(phrase_end, n / sr) * sr) - 1, 0)]
    voiced = _additive(f0, sr, lambda k, freq: k**-1.0 * _formant_gain(freq, formants))
    return voiced * amp + noise


def _drums(rng: np.random.Generator, sr: int, n: int, beat: float) -> np.ndarray:
    out = np.zeros(n)
    swing = rng.uniform(0, 0.04)
    for i in range(int(n / sr / (beat / 2))):
        start = int(i * beat / 2 * sr + (swing * sr if i % 2 else 0))
        if start >= n:
            break
        if i % 4 == 0 or (i % 8 == 5 and rng.random() < 0.5):  # kick
            m = min(int(0.25 * sr), n - start)
            tt = np.arange(m) / sr
            f = 45 + 80 * np.exp(-tt / 0.03)
            out[start : start + m] += np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-tt / 0.12)
        if i % 4 == 2:  # snare
            m = min(int(0.2 * sr), n - start)
            tt = np.arange(m) / sr
            out[start : start + m] += 0.5 * rng.normal(0, 1, m) * np.exp(-tt / 0.06)
            out[start : start + m] += 0.3 * np.sin(2 * np.pi * 185 * tt) * np.exp(-tt / 0.05)
        m = min(int(0.05 * sr), n - start)  # hi-hat on every eighth
        hat = np.diff(rng.normal(0, 1, m + 1))
        out[start : start + m] += 0.12 * hat * np.exp(-np.arange(m) / sr / 0.012)
    return out


def _bass(rng: np.random.Generator, sr: int, n: int, beat: float, chords: list[list[int]]) -> np.ndarray:
    f0 = np.full(n, midi_hz(chords[0][0] - 24))
    amp = np.zeros(n)
    for i in range(int(n / sr / beat) + 1):
        i0, i1 = int(i * beat * sr), min(int((i + 1) * beat * sr), n)
        if i0 >= n:
            break
        root = chords[(i // 4) % len(chords)][0] - 24 + (7 if i % 4 == 3 and rng.random() < 0.3 else 0)
        f0[i0:i1] = midi_hz(root)
        amp[i0:i1] = np.exp(-np.arange(i1 - i0) / sr / 0.35) * _envelope(i1 - i0, int(0.005 * sr), int(0.02 * sr))
    return _additive(f0, sr, lambda k, freq: (k**-1.3) * (k <= 8)) * amp


def _chords(rng: np.random.Generator, sr: int, n: int, beat: float, chords: list[list[int]]) -> np.ndarray:
    out = np.zeros(n)
    bar = 4 * beat
    brightness = rng.uniform(1.3, 2.0)
    for j in range(int(n / sr / bar) + 1):
        i0, i1 = int(j * bar * sr), min(int((j + 1) * bar * sr), n)
        if i0 >= n:
            break
        env = _envelope(i1 - i0, int(0.15 * sr), int(0.1 * sr))
        for note in chords[j % len(chords)]:
            f0 = np.full(i1 - i0, midi_hz(note + 12) * (1 + rng.normal(0, 0.001)))
            out[i0:i1] += env * _additive(f0, sr, lambda k, freq: k**-brightness)
    return out


def synth_song(index: int, seed: int, seconds: float, sample_rate: int) -> dict[str, np.ndarray]:
    """Stems of synthetic song `index`: {'vocals', 'drums', 'bass', 'chords'}, each float32 (n_samples,)."""
    rng = np.random.default_rng([seed, index])
    n = int(seconds * sample_rate)
    beat = 60.0 / rng.uniform(80, 130)
    key = int(rng.integers(48, 60))
    chords = [_triad(key, degree) for degree in PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]]
    stems = {
        "vocals": _vocals(rng, sample_rate, n, beat, key, chords),
        "drums": _drums(rng, sample_rate, n, beat),
        "bass": _bass(rng, sample_rate, n, beat, chords),
        "chords": _chords(rng, sample_rate, n, beat, chords),
    }
    return {name: (0.8 * s / max(np.abs(s).max(), 1e-9)).astype(np.float32) for name, s in stems.items()}


def synth_split(index: int) -> str:
    """Every fifth song is a test song (by index alone, so a bigger corpus extends a smaller one)."""
    return "test" if index % 5 == 4 else "train"


def write_synth_corpus(out: str | Path, n_songs: int, seed: int = 0, seconds: float = 20.0, sample_rate: int = 16000, progress: bool = False) -> Path:
    """Write `n_songs` synthetic songs as a stems folder; songs already written are kept. A folder
    holding songs of another length or rate is refused (`CorpusError`): a corpus must not mix them.
    The folder's settings are recorded in `synth.json`."""
    from tqdm import tqdm

    out = Path(out)
    _check_settings(out, seconds, sample_rate)
    for index in tqdm(range(n_songs), desc="synth songs", disable=not progress):
        song_dir = out / synth_split(index) / f"synth_{seed:03d}_{index:04d}"
        if (song_dir / "vocals.wav").exists():
            continue
        stems = synth_song(index, seed, seconds, sample_rate)
        # vocals.wav is written last: its presence marks a complete song for a rerun.
        for name in ("drums", "bass", "chords", "vocals"):
            write_audio(song_dir / f"{name}.wav", stems[name], sample_rate)
    (out / SETTINGS).write_text(json.dumps({"seconds": seconds, "sample_rate": sample_rate}))
    return out


SETTINGS = "synth.json"


def _check_settings(out: Path, seconds: float, sample_rate: int) -> None:
    """The folder's recorded settings (`SETTINGS`, written with its songs) must be the asked ones."""
    from karaoke.errors import CorpusError

    if not (out / SETTINGS).is_file():
        return
    found = json.loads((out / SETTINGS).read_text())
    held = (float(found["seconds"]), int(found["sample_rate"]))
    if held != (float(seconds), int(sample_rate)):
        raise CorpusError(
            f"{out}: holds synthetic songs of {held[0]:g} s at {held[1]} Hz, but {seconds:g} s at {sample_rate} Hz "
            f"were asked for; delete {out} or choose another corpus.root"
        )


def ensure_synth_corpus(corpus) -> Path:
    """Generate the configured synthetic corpus into `corpus.root` unless it is complete already."""
    if is_url(corpus.root):
        raise ValueError(f"{corpus.root}: the synthetic corpus is generated on local disk; give a local root")
    return write_synth_corpus(
        corpus.root, corpus.synth_songs, corpus.synth_seed, corpus.synth_seconds, corpus.sample_rate, progress=True
    )
