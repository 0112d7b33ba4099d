"""The paper's mixing rule, and the references BSS-EVAL scores against.

Sec. 3 of the paper: every stem is peak-normalised; the vocal stems are summed into a vocal signal
and the others into an accompaniment signal; each of the two is peak-normalised; their sum is the
mono mixture. The vocal and accompaniment signals are kept exactly as they enter the mixture, so
`mixture == vocals + accompaniment` holds to the last bit of float32 rounding.

The rule is applied to stems given as blocks (`mix_stem_blocks`), so that a song of any length is
mixed in the memory of one block: the peaks are found in passes over the stems before the first
mixed block; `mix_stems` is the same rule on stems held whole (one block each). A song mixed in
blocks is a `SongAudio`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from karaoke.audio import to_mono
from karaoke.errors import AudioError

# Below this peak a stem is silence (a 24-bit file's smallest step is 1.2e-7).
SILENCE_PEAK = 1e-6

# Blocks (n_channels, n) or (n,) of one signal at the song's rate, the same ones at every call.
Blocks = Callable[[], Iterator[np.ndarray]]


@dataclass(frozen=True)
class MixedSong:
    """A mono mixture and its two references, all float32 (n_samples,) at `sample_rate`."""

    song_id: str
    split: str
    sample_rate: int
    mixture: np.ndarray
    vocals: np.ndarray
    accompaniment: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.mixture) / self.sample_rate


@dataclass(frozen=True)
class SongAudio:
    """A song's mono mixture and references as blocks (3, m) float32 [mixture, vocals, accompaniment]
    at `sample_rate`; `blocks()` gives the same blocks at every call."""

    song_id: str
    split: str
    sample_rate: int
    blocks: Callable[[], Iterator[np.ndarray]]


def song_audio(song: MixedSong, block_samples: int) -> SongAudio:
    """The `SongAudio` of a song held whole: blocks of `block_samples`."""
    signals = (song.mixture, song.vocals, song.accompaniment)

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, len(song.mixture), block_samples):
            yield np.stack([s[start : start + block_samples] for s in signals])

    return SongAudio(song.song_id, song.split, song.sample_rate, blocks)


def _loud_peak(peak: float, name: str) -> float:
    """The peak a signal is divided by; a silent signal is an `AudioError` naming it (it cannot be normalised)."""
    if peak < SILENCE_PEAK:
        raise AudioError(f"{name}: stem is silent (peak {peak:.1e}); remove it from the song or fix the export")
    return peak


def _aligned(sources: Sequence[Blocks]) -> Iterator[list[np.ndarray]]:
    """Mono blocks of every source cut to common lengths, in step; ends with the shortest source."""
    streams = [iter(source()) for source in sources]
    pending: list[np.ndarray] = [np.zeros(0, np.float32) for _ in sources]
    while True:
        for k, stream in enumerate(streams):
            while not pending[k].size:
                block = next(stream, None)
                if block is None:
                    return
                pending[k] = to_mono(block)
        n = min(p.size for p in pending)
        yield [p[:n] for p in pending]
        pending = [p[n:] for p in pending]


def _group_sums(stems: Sequence[tuple[str, Blocks]], gains: Sequence[float] | None) -> Iterator[np.ndarray]:
    """Blocks of the sum of a group of stems (each divided by its peak when `gains` are the peaks), float32."""
    for blocks in _aligned([source for _, source in stems]):
        total = np.zeros(len(blocks[0]), dtype=np.float64)
        for k, mono in enumerate(blocks):
            total += (mono / gains[k]).astype(np.float32) if gains is not None else mono
        yield total.astype(np.float32)


def mix_stem_blocks(
    vocal_stems: Sequence[tuple[str, Blocks]],
    accompaniment_stems: Sequence[tuple[str, Blocks]],
    mode: Literal["paper", "sum"] = "paper",
    song_id: str = "<song>",
) -> Callable[[], Iterator[np.ndarray]]:
    """Mix named stems ((name, blocks) pairs) into a mono song given as blocks (3, m) float32
    [mixture, vocals, accompaniment] (`blocks()` gives the same blocks at every call).

    `mode="paper"` applies the paper's peak normalisations; `mode="sum"` adds the stems unchanged
    (MIR-1K's equal-level convention). Before returning, the stems are read once for their lengths
    and peaks and the group sums once for theirs: stems of different lengths, silent stems and an
    empty vocal or accompaniment group are `AudioError`s naming the file.
    """
    if not vocal_stems:
        raise AudioError(f"{song_id}: song has no vocal stem")
    if not accompaniment_stems:
        raise AudioError(f"{song_id}: song has no accompaniment stem")
    all_stems = list(vocal_stems) + list(accompaniment_stems)
    lengths, peaks = [], []
    for _, source in all_stems:
        n, peak = 0, 0.0
        for block in source():
            mono = to_mono(block)
            n += mono.shape[-1]
            peak = max(peak, float(np.max(np.abs(mono)))) if mono.size else peak
        lengths.append(n)
        peaks.append(peak)
    first_name = all_stems[0][0]
    for (name, _), n in zip(all_stems, lengths):
        if n != lengths[0]:
            raise AudioError(
                f"{name}: stem has {n} samples but {first_name} has {lengths[0]}; "
                "stems of one song must have equal lengths (trim or pad them when exporting)"
            )
    normalise = mode == "paper"
    groups = (vocal_stems, accompaniment_stems)
    stem_gains: list[list[float] | None] = [None, None]
    if normalise:
        stem_peaks = iter(_loud_peak(peak, name) for (name, _), peak in zip(all_stems, peaks))
        stem_gains = [[next(stem_peaks) for _ in group] for group in groups]
    group_peaks = []
    for group, gains, what in zip(groups, stem_gains, ("vocal", "accompaniment")):
        peak = max((float(np.max(np.abs(block))) for block in _group_sums(group, gains) if block.size), default=0.0)
        if normalise:
            group_peaks.append(_loud_peak(peak, f"{song_id} (sum of {what} stems)"))
        elif peak < SILENCE_PEAK:
            raise AudioError(f"{song_id}: the {what} signal is silent; it cannot be separated or scored")

    def blocks() -> Iterator[np.ndarray]:
        for vocals, accompaniment in zip(*(_group_sums(g, gains) for g, gains in zip(groups, stem_gains))):
            if normalise:
                vocals = (vocals / group_peaks[0]).astype(np.float32)
                accompaniment = (accompaniment / group_peaks[1]).astype(np.float32)
            yield np.stack([(vocals + accompaniment).astype(np.float32), vocals, accompaniment])

    return blocks


def mix_stems(
    vocal_stems: Sequence[tuple[str, np.ndarray]],
    accompaniment_stems: Sequence[tuple[str, np.ndarray]],
    mode: Literal["paper", "sum"] = "paper",
    song_id: str = "<song>",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`mix_stem_blocks` of stems held whole ((name, (n_channels, n_samples) or (n_samples,)) pairs).
    Returns (mixture, vocals, accompaniment), each (n_samples,)."""

    def whole(audio: np.ndarray) -> Blocks:
        return lambda: iter([audio])

    blocks = mix_stem_blocks(
        [(name, whole(audio)) for name, audio in vocal_stems],
        [(name, whole(audio)) for name, audio in accompaniment_stems],
        mode,
        song_id,
    )
    parts = list(blocks())
    mixed = np.concatenate(parts, axis=-1) if parts else np.zeros((3, 0), np.float32)
    return mixed[0], mixed[1], mixed[2]
