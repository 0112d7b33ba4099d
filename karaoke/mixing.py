"""The paper's mixing rule, and the references BSS-EVAL scores against.

Sec. 3 of the paper: every stem is peak-normalised; the vocal stems are summed into a vocal signal
and the others into an accompaniment signal; each of the two is peak-normalised; their sum is the
mono mixture. The vocal and accompaniment signals are kept exactly as they enter the mixture, so
`mixture == vocals + accompaniment` holds to the last bit of float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from karaoke.audio import to_mono
from karaoke.errors import AudioError

# Below this peak a stem is silence (a 24-bit file's smallest step is 1.2e-7).
SILENCE_PEAK = 1e-6


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


def peak_normalise(signal: np.ndarray, name: str) -> np.ndarray:
    """signal / max|signal|; a silent signal is an `AudioError` naming it (it cannot be normalised)."""
    peak = float(np.max(np.abs(signal))) if signal.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioError(f"{name}: stem is silent (peak {peak:.1e}); remove it from the song or fix the export")
    return (signal / peak).astype(np.float32)


def _sum_stems(stems: Sequence[tuple[str, np.ndarray]], n_samples: int, normalise: bool) -> np.ndarray:
    total = np.zeros(n_samples, dtype=np.float64)
    for name, audio in stems:
        mono = to_mono(audio)
        total += peak_normalise(mono, name) if normalise else mono
    return total.astype(np.float32)


def mix_stems(
    vocal_stems: Sequence[tuple[str, np.ndarray]],
    accompaniment_stems: Sequence[tuple[str, np.ndarray]],
    mode: Literal["paper", "sum"] = "paper",
    song_id: str = "<song>",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mix named stems ((name, (n_channels, n_samples) or (n_samples,)) pairs) into a mono song.

    `mode="paper"` applies the paper's peak normalisations; `mode="sum"` adds the stems unchanged
    (MIR-1K's equal-level convention). Returns (mixture, vocals, accompaniment), each (n_samples,).
    Stems of different lengths, silent stems and an empty vocal or accompaniment group are
    `AudioError`s naming the file.
    """
    if not vocal_stems:
        raise AudioError(f"{song_id}: song has no vocal stem")
    if not accompaniment_stems:
        raise AudioError(f"{song_id}: song has no accompaniment stem")
    all_stems = list(vocal_stems) + list(accompaniment_stems)
    first_name, first = all_stems[0]
    n_samples = first.shape[-1]
    for name, audio in all_stems:
        if audio.shape[-1] != n_samples:
            raise AudioError(
                f"{name}: stem has {audio.shape[-1]} samples but {first_name} has {n_samples}; "
                "stems of one song must have equal lengths (trim or pad them when exporting)"
            )
    normalise = mode == "paper"
    vocals = _sum_stems(vocal_stems, n_samples, normalise)
    accompaniment = _sum_stems(accompaniment_stems, n_samples, normalise)
    if normalise:
        vocals = peak_normalise(vocals, f"{song_id} (sum of vocal stems)")
        accompaniment = peak_normalise(accompaniment, f"{song_id} (sum of accompaniment stems)")
    else:
        for signal, what in ((vocals, "vocal"), (accompaniment, "accompaniment")):
            if np.max(np.abs(signal)) < SILENCE_PEAK:
                raise AudioError(f"{song_id}: the {what} signal is silent; it cannot be separated or scored")
    mixture = (vocals + accompaniment).astype(np.float32)
    return mixture, vocals, accompaniment
