"""The one interface every corpus reader produces: songs made of vocal and accompaniment stems.

Paths are strings so that a corpus can live on local disk or behind any fsspec URL (s3://...).
A problem that concerns one song (a missing stem, bad metadata) does not stop the listing: the song
carries the error and raises it when loaded, so a preparation job records it and goes on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from karaoke.audio import read_audio, resample
from karaoke.errors import AudioError, CorpusError
from karaoke.mixing import Blocks, MixedSong, SongAudio, mix_stem_blocks, mix_stems

# Block length of a song read in blocks (`Song.audio`).
BLOCK_SECONDS = 10.0


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
        _check_rates({path: rate for path, (_, rate) in decoded.items()})

        def pick(stem: Stem) -> tuple[str, np.ndarray]:
            audio, rate = decoded[stem.path]
            if stem.channel is not None:
                _check_channel(stem, audio.shape[0])
                audio = audio[stem.channel]
            return stem.name, resample(audio, rate, sample_rate)

        mixture, vocals, accompaniment = mix_stems(
            [pick(s) for s in self.vocal_stems],
            [pick(s) for s in self.accompaniment_stems],
            mode=mixing,
            song_id=self.song_id,
        )
        return MixedSong(self.song_id, self.split, sample_rate, mixture, vocals, accompaniment)

    def audio(self, sample_rate: int, mixing: str = "paper", block_seconds: float = BLOCK_SECONDS) -> SongAudio:
        """The song as `load` mixes it, streamed: stems decoded, resampled and mixed in blocks of
        `block_seconds`, so a song of any length takes the memory of a block (see
        `karaoke.mixing.mix_stem_blocks`, which reads the stems for their peaks before returning)."""
        from karaoke.audio import file_blocks, open_sound, resampled_blocks

        if self.error:
            raise CorpusError(self.error)
        headers = {}
        for stem in self.vocal_stems + self.accompaniment_stems:
            if stem.path not in headers:
                with open_sound(stem.path) as handle:
                    headers[stem.path] = (handle.samplerate, handle.channels, handle.frames)
                if headers[stem.path][2] == 0:
                    raise AudioError(f"{stem.path}: audio file is empty (0 samples)")
        _check_rates({path: rate for path, (rate, _, _) in headers.items()})

        def source(stem: Stem) -> tuple[str, Blocks]:
            rate, channels, _ = headers[stem.path]
            blocks = file_blocks(stem.path, block_seconds)
            if stem.channel is not None:
                _check_channel(stem, channels)
            picked = slice(stem.channel, stem.channel + 1) if stem.channel is not None else slice(None)

            def decoded() -> Iterator[np.ndarray]:
                return (block[picked] for block in blocks())

            return stem.name, resampled_blocks(decoded, rate, sample_rate)

        blocks = mix_stem_blocks(
            [source(s) for s in self.vocal_stems], [source(s) for s in self.accompaniment_stems], mixing, self.song_id
        )
        return SongAudio(self.song_id, self.split, sample_rate, blocks)


def _check_rates(rates: dict[str, int]) -> None:
    """The stems of a song must share one sample rate: `AudioError` naming the first that does not."""
    first_path = next(iter(rates))
    for path, rate in rates.items():
        if rate != rates[first_path]:
            raise AudioError(
                f"{path}: sample rate {rate} Hz differs from {first_path} ({rates[first_path]} Hz); "
                "export the stems of a song at one rate"
            )


def _check_channel(stem: Stem, n_channels: int) -> None:
    if stem.channel >= n_channels:
        raise AudioError(f"{stem.path}: expected at least {stem.channel + 1} channels, found {n_channels}")


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
