"""Per-song features: the mixture STFT, unit-scale magnitudes of the mixture and both sources, the
IBM, and the training windows cut from them (what the preparation job stores as rows), optionally
with remixed copies of each song (`windows.remixes`, beyond the paper)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from karaoke.config import ExperimentConfig
from karaoke.masks import ideal_binary_mask, training_window_starts, training_windows
from karaoke.mixing import MixedSong
from karaoke.spectral import stft, unit_scale


@dataclass(frozen=True)
class SongFeatures:
    """All (n_bins, n_frames); magnitudes divided by `scale`, the mixture magnitude's maximum."""

    mixture_stft: np.ndarray  # complex64, not normalised: masks are applied to it
    mixture: np.ndarray  # float32 |mixture| / scale
    vocals: np.ndarray  # float32 |vocals| / scale
    accompaniment: np.ndarray  # float32 |accompaniment| / scale
    ibm: np.ndarray  # bool, vocals > accompaniment
    scale: float


def song_features(song: MixedSong, config: ExperimentConfig) -> SongFeatures:
    """STFT the mixture and references, normalise them by one per-song scale, and compute the IBM."""
    spectra = stft(np.stack([song.mixture, song.vocals, song.accompaniment]), config.stft)
    magnitudes = np.abs(spectra)
    scale = unit_scale(magnitudes[0])
    magnitudes /= scale
    return SongFeatures(
        mixture_stft=spectra[0],
        mixture=magnitudes[0],
        vocals=magnitudes[1],
        accompaniment=magnitudes[2],
        ibm=ideal_binary_mask(magnitudes[1], magnitudes[2]),
        scale=scale,
    )


def training_rows(features: SongFeatures, config: ExperimentConfig) -> dict[str, np.ndarray]:
    """Training windows of one song: T frames every `train_hop` frames.

    Returns `start_frame` (n_windows,) and `mixture`, `ibm`, `vocals`, `accompaniment`, each
    (n_windows, n_bins, T); n_windows = 0 for a song shorter than one window.
    """
    size, hop = config.windows.n_frames, config.windows.train_hop
    return {
        "start_frame": training_window_starts(features.mixture.shape[1], size, hop),
        "mixture": training_windows(features.mixture, size, hop),
        "ibm": training_windows(features.ibm, size, hop),
        "vocals": training_windows(features.vocals, size, hop),
        "accompaniment": training_windows(features.accompaniment, size, hop),
    }


def remix_partners(song_id: str, candidates: Sequence[str], config: ExperimentConfig) -> list[str]:
    """The `windows.remixes` song ids (other than `song_id`, drawn with replacement from the sorted
    `candidates`) whose accompaniment is put under this song's voice; seeded by the song id."""
    others = sorted(c for c in candidates if c != song_id)
    if not others or config.windows.remixes == 0:
        return []
    rng = _song_rng(song_id, config, stream=0)
    return [others[i] for i in rng.integers(0, len(others), config.windows.remixes)]


def remix(song: MixedSong, partner: MixedSong, index: int, config: ExperimentConfig) -> MixedSong:
    """Remix `index` of a song: its voice at a random gain (uniform in +-`windows.remix_gain_db` dB)
    over the partner's accompaniment, looped if shorter and cut at a random offset to the song's length."""
    rng = _song_rng(song.song_id, config, stream=1 + index)
    vocals = song.vocals
    if config.windows.remix_pitch_semitones > 0:
        vocals = _pitch_shifted(vocals, song.sample_rate, index, song.song_id, config)
    n = len(vocals)
    repeats = -(-n // max(len(partner.accompaniment), 1)) + 1
    looped = np.tile(partner.accompaniment, repeats)
    offset = int(rng.integers(0, len(looped) - n + 1))
    gain = np.float32(10 ** (rng.uniform(-1, 1) * config.windows.remix_gain_db / 20))
    vocals, accompaniment = vocals * gain, looped[offset : offset + n]
    return MixedSong(
        f"{song.song_id}+{partner.song_id}", song.split, song.sample_rate, vocals + accompaniment, vocals, accompaniment
    )


def _pitch_shifted(vocals: np.ndarray, sample_rate: int, index: int, song_id: str, config: ExperimentConfig) -> np.ndarray:
    """The voice resampled by 2^(s/12), s uniform in +-`windows.remix_pitch_semitones` (its own random
    stream): played at the same rate it is s semitones higher (formants too) and 2^(-s/12) as long."""
    from karaoke.audio import resample

    semitones = _song_rng(song_id, config, stream=-1 - index).uniform(-1, 1) * config.windows.remix_pitch_semitones
    return resample(vocals, sample_rate * 2 ** (semitones / 12), sample_rate)


def song_training_rows(
    song: MixedSong, features: SongFeatures, config: ExperimentConfig, partners: Sequence[MixedSong] = ()
) -> dict[str, np.ndarray]:
    """`training_rows` of a song (from its `features`) followed by those of its remixes over each of
    `partners` (see `remix_partners`); `remix` is (n_windows,) int, 0 for the song itself and i + 1
    for remix i."""
    parts = [training_rows(features, config)]
    for index, partner in enumerate(partners):
        parts.append(training_rows(song_features(remix(song, partner, index, config), config), config))
    # A song without remixes keeps its own arrays: concatenating one part would copy every window.
    rows = {key: np.concatenate([part[key] for part in parts]) if partners else parts[0][key] for key in parts[0]}
    rows["remix"] = np.concatenate([np.full(len(part["start_frame"]), i, dtype=np.int64) for i, part in enumerate(parts)])
    return rows


def _song_rng(song_id: str, config: ExperimentConfig, stream: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{config.windows.remix_seed}/{stream}/{song_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
