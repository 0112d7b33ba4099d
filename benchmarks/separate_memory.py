"""`karaoke separate` peak memory on a 1-hour file against a shorter file (bounded memory).

    python -m benchmarks.separate_memory [--minutes 60] [--short-minutes 1] [--precision float32]
    python -m benchmarks.separate_memory --rate 44100 --channels 2 --short-minutes 10 --model mir1k

Writes a song (tones, a moving melody and noise bursts, written in 10 s blocks so that the
benchmark itself stays small; mono 16 kHz unless `--rate` / `--channels` say otherwise) of
`--short-minutes` and of `--minutes`. The model is `--model` (a shipped model's name or a
checkpoint), or by default an untrained demo-width network (configs/demo.yaml, saved with
`karaoke.models.dnn.save_dnn`; weights do not change the cost). Each file goes through the real
command, `karaoke separate SONG --model MODEL --out OUT`, in its own process; the peak resident
memory of that process comes from `os.wait4`. Bounded memory means the two peaks are about equal:
the ratio long / short is printed with both wall times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RATE = 16000
BLOCK_SECONDS = 10


def write_song(path: Path, seconds: float, rate: int = RATE, channels: int = 1) -> None:
    """A PCM-16 song of `seconds`, written block by block (n_samples = seconds * rate); a second
    channel is the first with the noise bursts inverted."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", rate, channels, subtype="PCM_16") as handle:
        for start in range(0, int(seconds * rate), rate * BLOCK_SECONDS):
            n = min(rate * BLOCK_SECONDS, int(seconds * rate) - start)
            t = (start + np.arange(n)) / rate
            melody = 0.2 * np.sin(2 * np.pi * (330 + 110 * np.sin(2 * np.pi * 0.25 * t)) * t)
            chords = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (130.8, 164.8, 196.0))
            noise = 0.05 * rng.standard_normal(n) * (np.sin(2 * np.pi * 2 * t) > 0.5)
            left = melody + chords + noise
            block = left if channels == 1 else np.stack([left, melody + chords - noise][:channels], axis=1)
            handle.write(block.astype(np.float32))


def separate(song: Path, model: str, out: Path, precision: str) -> tuple[float, float]:
    """Run `karaoke separate` on `song` in a child process; returns (wall seconds, peak RSS MiB)."""
    command = [sys.executable, "-m", "karaoke_cli", "separate", str(song),
               "--model", model, "--out", str(out), "--precision", precision]
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"karaoke separate failed on {song} (exit {os.waitstatus_to_exitcode(status)})")
    return seconds, usage.ru_maxrss / 1024  # Linux reports kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the long file")
    parser.add_argument("--short-minutes", type=float, default=1.0, help="length of the file it is compared with")
    parser.add_argument("--rate", type=int, default=RATE, help="sample rate of both files")
    parser.add_argument("--channels", type=int, choices=[1, 2], default=1)
    parser.add_argument("--model", help="a shipped model's name or a checkpoint (default: an untrained demo-width network)")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--workdir", help="folder for the songs and outputs (default: a temporary one)")
    args = parser.parse_args()

    import torch

    from karaoke.config import load_config
    from karaoke.models.dnn import build_model, save_dnn

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = args.model or str(save_dnn(tmp / "model", build_model(config), config, 0, {}))
        results = {}
        for minutes in (args.short_minutes, args.minutes):
            song = tmp / f"song_{minutes:g}min.wav"
            write_song(song, minutes * 60, args.rate, args.channels)
            results[minutes] = separate(song, model, tmp / f"out_{minutes:g}", args.precision)
            song.unlink()
    described = args.model or f"demo width ({config.n_inputs} -> {config.dnn.hidden_sizes} -> {config.n_inputs})"
    print(f"model: {described}, {args.precision}; {args.channels}-channel {args.rate / 1000:g} kHz input; "
          f"machine load {os.getloadavg()[0]:.1f}")
    for minutes, (seconds, peak) in results.items():
        print(f"{minutes:g} min: {seconds:.1f} s wall ({minutes * 60 / seconds:.1f}x real time, "
              f"{seconds / minutes:.1f} s per audio-minute), peak RSS {peak:.0f} MiB")
    short, long = results[args.short_minutes][1], results[args.minutes][1]
    print(f"peak RSS ratio {args.minutes:g} min / {args.short_minutes:g} min: {long / short:.2f} (bounded memory: about 1)")


if __name__ == "__main__":
    main()
