"""`karaoke separate` peak memory on a 1-hour file against a 1-minute file (bounded memory).

    python -m benchmarks.separate_memory [--minutes 60] [--precision float32]

Writes a mono 16 kHz song (tones, a moving melody and noise bursts, written in 10 s blocks so that
the benchmark itself stays small) of 1 minute and of `--minutes`, and an untrained demo-width
network (configs/demo.yaml, saved with `karaoke.models.dnn.save_dnn`; weights do not change the
cost). Each file goes through the real command, `karaoke separate SONG --model CKPT --out OUT`, in
its own process; the peak resident memory of that process comes from `os.wait4`. Bounded memory
means the two peaks are about equal: the ratio long / short is printed with both wall times.
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


def write_song(path: Path, seconds: float) -> None:
    """A mono PCM-16 song of `seconds`, written block by block (n_samples = seconds * 16000)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", RATE, 1, subtype="PCM_16") as handle:
        for start in range(0, int(seconds * RATE), RATE * BLOCK_SECONDS):
            n = min(RATE * BLOCK_SECONDS, int(seconds * RATE) - start)
            t = (start + np.arange(n)) / RATE
            melody = 0.2 * np.sin(2 * np.pi * (330 + 110 * np.sin(2 * np.pi * 0.25 * t)) * t)
            chords = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (130.8, 164.8, 196.0))
            noise = 0.05 * rng.standard_normal(n) * (np.sin(2 * np.pi * 2 * t) > 0.5)
            handle.write((melody + chords + noise).astype(np.float32))


def separate(song: Path, model: Path, out: Path, precision: str) -> tuple[float, float]:
    """Run `karaoke separate` on `song` in a child process; returns (wall seconds, peak RSS MiB)."""
    command = [sys.executable, "-m", "karaoke_cli", "separate", str(song),
               "--model", str(model), "--out", str(out), "--precision", precision]
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
        model = save_dnn(tmp / "model", build_model(config), config, 0, {})
        results = {}
        for minutes in (1.0, args.minutes):
            song = tmp / f"song_{minutes:g}min.wav"
            write_song(song, minutes * 60)
            results[minutes] = separate(song, model, tmp / f"out_{minutes:g}", args.precision)
            song.unlink()
    print(f"model: demo width ({config.n_inputs} -> {config.dnn.hidden_sizes} -> {config.n_inputs}), "
          f"{args.precision}; mono 16 kHz input; machine load {os.getloadavg()[0]:.1f}")
    for minutes, (seconds, peak) in results.items():
        speed = minutes * 60 / seconds
        print(f"{minutes:g} min: {seconds:.1f} s wall ({speed:.1f}x real time), peak RSS {peak:.0f} MiB")
    short, long = results[1.0][1], results[args.minutes][1]
    print(f"peak RSS ratio {args.minutes:g} min / 1 min: {long / short:.2f} (bounded memory: about 1)")


if __name__ == "__main__":
    main()
