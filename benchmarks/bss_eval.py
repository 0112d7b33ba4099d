"""Fast BSS-EVAL engine vs mir_eval on a 17-alpha sweep of a 3.7-minute 44.1 kHz song.

The song is real audio: the MUSDB sample (../shared/data/musdb-sample) tiled to 3.7 minutes, each
tile of each source with its own gain so that the song is not periodic. The estimates are the
paper's alpha masks (Eq. 2) of a soft mask (the IBM smoothed over 9 frames) at the 17 alphas of the
default grid, made before any timing.

Timed, interleaved so that both see the same load on a shared machine: each of `--repeats` rounds
times the fast engine scoring the whole sweep (reference work included) and then mir_eval's
`bss_eval_sources(..., compute_permutation=False)` on one alpha (rounds take alphas spread over the
grid: one mir_eval call is ~1 minute here, 17 per round would take a quarter of an hour). The
mir_eval sweep time is the median per-alpha time times 17. Prints the medians, the ratio, and the
largest difference between the two on the alphas both scored.

    python -u benchmarks/bss_eval.py [--minutes 3.7] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "musdb-sample"
SAMPLE_RATE = 44100


def tiled_song(minutes: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(vocals, accompaniment), each (n_samples,) float32, from the MUSDB sample tiled to `minutes`."""
    from karaoke.config import CorpusConfig
    from karaoke.corpora import list_songs

    if not SHARED.exists():
        raise SystemExit(f"real audio not found at {SHARED} (the ../shared/data folder beside the checkout)")
    corpus = CorpusConfig(layout="musdb", root=str(SHARED), sample_rate=SAMPLE_RATE)
    song = list_songs(corpus)[0].load(SAMPLE_RATE, "paper")
    n_samples = int(minutes * 60 * SAMPLE_RATE)
    n_tiles = -(-n_samples // len(song.vocals))
    gains = np.random.default_rng(seed).uniform(0.5, 1.0, size=(2, n_tiles, 1))
    vocals = (np.tile(song.vocals, (n_tiles, 1)) * gains[0]).reshape(-1)[:n_samples]
    accompaniment = (np.tile(song.accompaniment, (n_tiles, 1)) * gains[1]).reshape(-1)[:n_samples]
    return vocals.astype(np.float32), accompaniment.astype(np.float32)


def sweep_estimates(vocals: np.ndarray, accompaniment: np.ndarray, alphas) -> np.ndarray:
    """(n_alphas, 2, n_samples) float32 alpha-mask estimates of a smoothed-IBM soft mask."""
    from scipy.ndimage import uniform_filter1d

    from karaoke.config import StftConfig
    from karaoke.masks import ideal_binary_mask, masks_to_audio
    from karaoke.spectral import stft

    stft_cfg = StftConfig(n_fft=2048, hop_length=512)
    spectra = stft(np.stack([vocals + accompaniment, vocals, accompaniment]), stft_cfg)
    ibm = ideal_binary_mask(np.abs(spectra[1]), np.abs(spectra[2]))
    probability = uniform_filter1d(ibm.astype(np.float32), size=9, axis=1)
    return np.stack([np.stack(masks_to_audio(spectra[0], probability, a, stft_cfg, len(vocals))) for a in alphas])


def fast_sweep(references: np.ndarray, estimates: np.ndarray) -> np.ndarray:
    from karaoke.bss_engine import bss_eval

    return np.stack(bss_eval(references, estimates), axis=1)  # (n_alphas, 3, 2)


def mir_eval_one(references: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    import mir_eval

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return np.array(mir_eval.separation.bss_eval_sources(references, estimate, compute_permutation=False)[:3])


def main() -> None:
    from karaoke.config import EvaluationConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.7)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    alphas = EvaluationConfig().alphas
    vocals, accompaniment = tiled_song(args.minutes)
    references = np.stack([vocals, accompaniment])
    estimates = sweep_estimates(vocals, accompaniment, alphas)
    print(f"song: {len(vocals) / SAMPLE_RATE / 60:.2f} min at {SAMPLE_RATE} Hz, {len(alphas)} alphas")

    picks = np.linspace(0, len(alphas) - 1, args.repeats).round().astype(int)
    fast_times, mir_times, worst = [], [], 0.0
    for k in picks:
        start = time.perf_counter()
        fast = fast_sweep(references, estimates)
        fast_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        expected = mir_eval_one(references, estimates[k])
        mir_times.append(time.perf_counter() - start)
        worst = max(worst, float(np.max(np.abs(expected - fast[k]))))
        print(
            f"  fast engine, 17 alphas: {fast_times[-1]:.2f} s   mir_eval, alpha={alphas[k]:.2f}: {mir_times[-1]:.1f} s"
        )
    fast_sweep_s = statistics.median(fast_times)
    mir_sweep_s = statistics.median(mir_times) * len(alphas)
    print(f"fast engine, whole sweep: median {fast_sweep_s:.2f} s of {args.repeats}")
    print(f"mir_eval per alpha, whole sweep: {mir_sweep_s:.1f} s (median of {args.repeats} alphas x {len(alphas)})")
    print(f"max |fast - mir_eval| over {args.repeats} alphas x 2 sources x SDR/SIR/SAR: {worst:.2e} dB")
    print(f"speed-up: {mir_sweep_s / fast_sweep_s:.1f}x")


if __name__ == "__main__":
    main()
