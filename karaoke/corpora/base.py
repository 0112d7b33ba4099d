"""The one interface every corpus reader produces: songs made of vocal and accompaniment stems.

Paths are strings so that a corpus can live on local disk or behind any fsspec URL (s3://...).
A problem that concerns one song (a missing stem, bad metadata) does not stop the listing: the song
carries the error and raises it when loaded, so a preparation job records it and goes on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from karaoke.audio import read_audio, resample
from karaoke.errors import AudioError, CorpusError
from karaoke.mixing import MixedSong, mix_stems


@dataclass(frozen=True)
class Stem:
    """One source signal: a whole file downmixed to mono, or one channel of it (MIR-1K)."""

    path: str
    channel: int | None = None

    @property
    def name(self) -> str:
        return self.path if self.channel is None else f"{self.path} (channel {self.channel})"


@dataclass(frozen=True)
class Song:
    song_id: str
    split: str
    vocal_stems: tuple[Stem, ...]
    accompaniment_stems: tuple[Stem, ...]
    error: str | None = None

    def load(self, sample_rate: int, mixing: str = "paper") -> MixedSong:
        """Decode, check and mix the stems at `sample_rate` (see `karaoke.mixing`)."""
        if self.error:
            raise CorpusError(self.error)
        decoded: dict[str, tuple[np.ndarray, int]] = {}
        for stem in self.vocal_stems + self.accompaniment_stems:
            if stem.path not in decoded:
                decoded[stem.path] = read_audio(stem.path)
        rates = {path: rate for path, (_, rate) in decoded.items()}
        first_path = next(iter(rates))
        for path, rate in rates.items():
            if rate != rates[first_path]:
                raise AudioError(
                    f"{path}: sample rate {rate} Hz differs from {first_path} ({rates[first_path]} Hz); "
                    "export the stems of a song at one rate"
                )

        def pick(stem: Stem) -> tuple[str, np.ndarray]:
            audio, rate = decoded[stem.path]
            if stem.channel is not None:
                if stem.channel >= audio.shape[0]:
                    raise AudioError(
                        f"{stem.path}: expected at least {stem.channel + 1} channels, found {audio.shape[0]}"
                    )
                audio = audio[stem.channel]
            return stem.name, resample(audio, rate, sample_rate)

        mixture, vocals, accompaniment = mix_stems(
            [pick(s) for s in self.vocal_stems],
            [pick(s) for s in self.accompaniment_stems],
            mode=mixing,
            song_id=self.song_id,
        )
        return MixedSong(self.song_id, self.split, sample_rate, mixture, vocals, accompaniment)


def hash_fraction(song_id: str) -> float:
    """A stable pseudo-random number in [0, 1) from a song id (same on every machine and run)."""
    return int(hashlib.sha1(song_id.encode()).hexdigest()[:8], 16) / 2**32


def hash_split(song_id: str, valid_fraction: float, test_fraction: float) -> str:
    """Assign a song to train/valid/test by its id alone, so adding songs never moves another."""
    u = hash_fraction(song_id)
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


def with_valid(split: str, song_id: str, valid_fraction: float) -> str:
    """Move a `valid_fraction` of a corpus's own training songs into validation."""
    if split == "train" and hash_fraction(song_id + "/valid") < valid_fraction:
        return "valid"
    return split
