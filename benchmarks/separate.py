"""`karaoke separate` speed and memory on a 3.7-minute 44.1 kHz stereo song with the default model.

    python -m benchmarks.separate [--repeats 3]

Writes a song of tones, chords and noise (stereo, 44.1 kHz; the content does not change the work),
then runs the file-level separation with the shipped default model on the CPU (its soft masks; read,
two streaming passes with the mask at 16 kHz applied at 44.1 kHz, write 44.1 kHz stereo) in a fresh
process per run, model load included, with float32 and with bfloat16 network arithmetic
(`--precision`). Prints the seconds per minute of audio and the real-time factor (median of
repeats; target >= 20x real time, 3 s per minute), the CPU seconds, and the peak resident memory at
1x and 2x the song length (target: the same).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SONG_SECONDS = 3.7 * 60
RATE = 44100


def write_song(path: Path, seconds: float) -> None:
    """Chords with a moving melody over noise bursts: a stereo mixture with structure in time and frequency."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", RATE, 2, subtype="PCM_16") as handle:
        for start in range(0, int(seconds * RATE), RATE * 10):
            n = min(RATE * 10, int(seconds * RATE) - start)
            t = (start + np.arange(n)) / RATE
            melody = 0.2 * np.sin(2 * np.pi * (330 + 110 * np.sin(2 * np.pi * 0.25 * t)) * t)
            chords = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (130.8, 164.8, 196.0))
            noise = 0.05 * rng.standard_normal(n) * (np.sin(2 * np.pi * 2 * t) > 0.5)
            handle.write(np.stack([melody + chords + noise, 0.7 * melody + chords], axis=1).astype(np.float32))


def child(song: str, out: str, precision: str) -> None:
    """One separation in this process; prints wall seconds and peak RSS as JSON."""
    import resource
    import time

    from karaoke.separator import Separator

    start = time.perf_counter()
    separator = Separator.from_pretrained(device="cpu", precision=precision)
    separator.separate_file(song, out)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024}))


def run_child(song: Path, out: Path, precision: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.separate", "--child", str(song), str(out), precision]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("SONG", "OUT", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from karaoke.model_store import locate_model, model_name

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        songs = {1: tmp / "song.wav", 2: tmp / "song2x.wav"}
        for factor, path in songs.items():
            write_song(path, SONG_SECONDS * factor)
        runs = {
            precision: [run_child(songs[1], tmp / "out", precision) for _ in range(args.repeats)]
            for precision in ("float32", "bfloat16")
        }
        double = run_child(songs[2], tmp / "out2", "float32")
    print(f"song: {SONG_SECONDS:.0f} s, 44.1 kHz stereo; model: the default, {model_name(locate_model(None))}; "
          f"{os.cpu_count()} cores")
    for precision, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        cpu = statistics.median(r["cpu_seconds"] for r in results)
        each = ", ".join(f"{r['seconds']:.1f}" for r in results)
        print(f"separate --precision {precision}: {seconds:.2f} s wall (median of {args.repeats}: {each}) -> {seconds / SONG_SECONDS * 60:.2f} s per minute "
              f"of audio, {SONG_SECONDS / seconds:.1f}x real time (target >= 20x); {cpu:.1f} CPU-seconds, "
              f"{SONG_SECONDS / cpu:.1f}x real time per busy core (the machine's load: {os.getloadavg()[0]:.1f})")
    peak = statistics.median(r["peak_mib"] for r in runs["float32"])
    print(f"peak RSS (float32): {peak:.0f} MiB at 1x length, {double['peak_mib']:.0f} MiB at 2x length "
          f"(ratio {double['peak_mib'] / peak:.2f}; 2x-length run {SONG_SECONDS * 2 / double['seconds']:.1f}x real time)")


if __name__ == "__main__":
    main()
