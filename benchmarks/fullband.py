"""Full-band separation quality and speed on the shared MUSDB excerpt (44.1 kHz stereo).

    python benchmarks/fullband.py --model runs/mir1k/dnn [--repeats 3]

The model's mask is estimated at its own rate (16 kHz for MIR-1K models) and applied to the
44.1 kHz STFT of each channel (`karaoke.fullband`). Printed, per mask mode (binary at the model's
alpha, and soft), mir_eval's whole-signal SDR of vocals and accompaniment, the mean over the two
channels:
- model rate: the mixture resampled to the model's rate, separated there, scored against the
  stems resampled to that rate (what 16 kHz output gives);
- the model-rate output resampled to 44.1 kHz, scored against the 44.1 kHz stems: the same
  estimate, so its difference to the model-rate figure is the metric's alone (BSS-EVAL's 512-tap
  distortion filter spans 32 ms at 16 kHz but 11.6 ms at 44.1 kHz, so it forgives less);
- full rate: the 44.1 kHz output scored against the 44.1 kHz stems, for each rule for the bins
  above the model's band (`karaoke.fullband.HighBand`), with the 512-tap filter, with one spanning
  the same time as at the model's rate; and the SNR (stem energy over error energy) of the band
  above the model's alone, estimates and stems high-passed there: the band the rule decides, which
  holds too little of the song's energy to move the whole-signal figures much (0 dB for the
  vocals: no closer than silence there).
Target: the full-rate SDR within 0.5 dB of the model-rate one, or better. Then the speed of
`Separator.separate_file` (decode, two passes, write 32-bit WAV) on the excerpt repeated to one
minute, in seconds per minute of 44.1 kHz stereo audio (median of `--repeats`, fresh file each).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import get_args

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SONG = Path(__file__).resolve().parents[2] / "shared" / "data" / "musdb-sample" / "The Easton Ellises - Falcon 69"


def read_stems(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(mixture, vocals, accompaniment), each (2, n) float32 at the file rate, and the rate;
    accompaniment = drums + bass + other (MUSDB's convention)."""
    from karaoke.audio import read_audio

    mixture, rate = read_audio(folder / "mixture.flac")
    vocals, _ = read_audio(folder / "vocals.flac")
    accompaniment = sum(read_audio(folder / f"{stem}.flac")[0] for stem in ("drums", "bass", "other"))
    return mixture, vocals, accompaniment, rate


def sdr(
    vocals_ref: np.ndarray, accompaniment_ref: np.ndarray, vocals: np.ndarray, accompaniment: np.ndarray, taps: int = 512
) -> tuple[float, float]:
    """BSS-EVAL SDR (vocals, accompaniment) in dB of (n_channels, n) signals, the mean over channels:
    `karaoke.bss_engine`, equal to mir_eval's `bss_eval_sources` at its 512-tap distortion filter."""
    from karaoke.bss_engine import bss_eval

    scores = [
        bss_eval(np.stack([vocals_ref[c], accompaniment_ref[c]]), np.stack([vocals[c], accompaniment[c]]), taps, sdr_only=True)[0]
        for c in range(vocals_ref.shape[0])
    ]
    return tuple(float(v) for v in np.mean(scores, axis=0))


def above(signal: np.ndarray, rate: int, cutoff: float) -> np.ndarray:
    """(n_channels, n) `signal` with every frequency up to `cutoff` Hz removed (whole-signal FFT)."""
    spectrum = np.fft.rfft(signal, axis=-1)
    spectrum[..., np.fft.rfftfreq(signal.shape[-1], 1 / rate) <= cutoff] = 0
    return np.fft.irfft(spectrum, n=signal.shape[-1], axis=-1).astype(np.float32)


def snr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Signal-to-error energy ratio in dB of an estimate of `reference` (both (n_channels, n))."""
    return float(10 * np.log10(np.sum(reference**2) / np.sum((estimate - reference) ** 2)))


def separate_rule(separator, audio: np.ndarray, rate: int, mask: str, high_band: str) -> tuple[np.ndarray, np.ndarray]:
    """The separation of (n_channels, n) `audio` at `rate` under one high-band rule."""
    from karaoke.separate import separate_stream

    stream = separate_stream(separator.model, separator.config, lambda: [audio], rate, mask, separator.alpha, high_band=high_band)
    pairs = list(stream)
    return np.concatenate([v for v, _ in pairs], -1), np.concatenate([a for _, a in pairs], -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name, folder or URL (default: the shipped default)")
    parser.add_argument("--song", default=str(SONG), help="MUSDB song folder with mixture, vocals, drums, bass, other .flac")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from karaoke.audio import resample
    from karaoke.fullband import HIGH_BAND, HighBand
    from karaoke.separator import Separator

    torch.set_num_threads(args.threads)
    song = Path(args.song)
    if not song.is_dir():
        raise SystemExit(f"{song}: MUSDB excerpt not found (the ../shared/data folder beside the checkout)")
    mixture, vocals, accompaniment, rate = read_stems(song)
    print(f"song: {song.name}, {mixture.shape[-1] / rate:.1f} s at {rate} Hz, {mixture.shape[0]} channels")
    unprocessed = sdr(vocals, accompaniment, mixture, mixture)
    model_rate = Separator.from_pretrained(args.model, "cpu").sample_rate
    high_refs = [above(x, rate, model_rate / 2) for x in (vocals, accompaniment)]
    high_mixture = above(mixture, rate, model_rate / 2)
    print(f"mixture as estimate: SDR vocals {unprocessed[0]:.2f} dB, accompaniment {unprocessed[1]:.2f} dB; "
          f"SNR above {model_rate // 2000} kHz: {snr(high_refs[0], high_mixture):.2f} / {snr(high_refs[1], high_mixture):.2f}")
    for mode in ("binary", "soft"):
        separator = Separator.from_pretrained(args.model, "cpu", mask=mode)
        low = [resample(x, rate, model_rate) for x in (mixture, vocals, accompaniment)]
        at_model = separator.separate(low[0], model_rate)
        base = sdr(low[1], low[2], at_model.vocals, at_model.accompaniment)
        alpha = f" (alpha {separator.alpha})" if mode == "binary" else ""
        print(f"{separator.name}, {mode} masks{alpha}:")
        print(f"  model rate ({model_rate} Hz): SDR vocals {base[0]:.2f} dB, accompaniment {base[1]:.2f} dB")
        upsampled = [resample(x, model_rate, rate)[:, : mixture.shape[-1]] for x in (at_model.vocals, at_model.accompaniment)]
        old = sdr(vocals, accompaniment, *upsampled)
        print(f"  model-rate output resampled to {rate} Hz: SDR vocals {old[0]:.2f} dB ({old[0] - base[0]:+.2f}), "
              f"accompaniment {old[1]:.2f} dB ({old[1] - base[1]:+.2f})")
        taps = round(512 * rate / model_rate)
        for rule in get_args(HighBand):
            estimates = separate_rule(separator, mixture, rate, mode, rule)
            full, span = sdr(vocals, accompaniment, *estimates), sdr(vocals, accompaniment, *estimates, taps=taps)
            high = [snr(ref, above(x, rate, model_rate / 2)) for ref, x in zip(high_refs, estimates)]
            default = " (default)" if rule == HIGH_BAND else ""
            print(f"  full rate ({rate} Hz), high band {rule!r}{default}: SDR vocals {full[0]:.2f} dB ({full[0] - base[0]:+.2f}), "
                  f"accompaniment {full[1]:.2f} dB ({full[1] - base[1]:+.2f}); with a {taps}-tap filter "
                  f"(the 512 taps' {512 / model_rate * 1000:.0f} ms): {span[0]:.2f} ({span[0] - base[0]:+.2f}) / "
                  f"{span[1]:.2f} ({span[1] - base[1]:+.2f}); SNR above {model_rate // 2000} kHz: "
                  f"{high[0]:.2f} / {high[1]:.2f}")

    import soundfile as sf

    separator = Separator.from_pretrained(args.model, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        repeats = int(np.ceil(60 * rate / mixture.shape[-1]))
        minute = np.tile(mixture, repeats)[:, : 60 * rate]
        sf.write(Path(tmp) / "minute.flac", minute.T, rate, subtype="PCM_24")
        times = []
        for i in range(args.repeats):
            start = time.perf_counter()
            separator.separate_file(Path(tmp) / "minute.flac", Path(tmp) / f"out{i}")
            times.append(time.perf_counter() - start)
    print(f"speed ({separator.name}, {separator.mask} masks, {args.threads} threads): "
          f"{statistics.median(times):.1f} s per minute of {rate} Hz stereo audio (median of {args.repeats}; "
          f"{60 / statistics.median(times):.1f}x real time)")


if __name__ == "__main__":
    main()
