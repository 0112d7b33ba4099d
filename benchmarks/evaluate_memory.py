"""`karaoke evaluate` peak memory on a 1-hour 44.1 kHz stereo song against a 10-minute one (bounded memory).

    python -m benchmarks.evaluate_memory [--minutes 60] [--short-minutes 10] [--workdir DIR]

Each song is a MUSDB-layout corpus of its own (`test/song/{vocals,drums,bass,other}.wav`, 44.1 kHz
stereo, 16-bit), tiled from a few 20 s synthetic songs (`karaoke.corpora.synth`) rendered at
44.1 kHz: every 20 s tile of every stem takes one of them at its own gain and stereo position, so
the song is neither silent nor periodic, and it is written tile by tile so that the benchmark
itself stays small. The song goes through the real command,

    karaoke evaluate --config configs/demo.yaml --set corpus.layout=musdb --set corpus.root=ROOT \
        --set evaluation.split=test --dnn CKPT --out OUT

with an untrained demo-width network (weights do not change the cost) and the IBM: two Ray tasks,
each reading the stems in blocks and scoring whole-song and framewise BSS-EVAL (the DNN over the
9-alpha grid and the soft masks). The peak resident memory (VmHWM) of every process of the command
(the driver, the Ray workers, Ray's own daemons) is read from /proc every 0.2 s. Bounded memory
means the peaks are about equal for both songs: their ratio long / short is printed with the wall
times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RATE = 44100
TILE_SECONDS = 20.0
N_SEGMENTS = 4
STEMS = ("vocals", "drums", "bass", "chords")
FILE_STEMS = {"vocals": "vocals", "drums": "drums", "bass": "bass", "chords": "other"}
REPO = Path(__file__).resolve().parents[1]


def write_song(folder: Path, seconds: float, segments: list[dict], seed: int = 0) -> None:
    """The four stems of a `seconds`-long song, 44.1 kHz stereo PCM-16, tile by tile from `segments`."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tile = int(TILE_SECONDS * RATE)
    n_samples = int(seconds * RATE)
    handles = {s: sf.SoundFile(folder / f"{FILE_STEMS[s]}.wav", "w", RATE, 2, subtype="PCM_16") for s in STEMS}
    try:
        for start in range(0, n_samples, tile):
            n = min(tile, n_samples - start)
            for stem in STEMS:
                mono = segments[int(rng.integers(len(segments)))][stem][:n]
                gain, pan = rng.uniform(0.4, 0.9), rng.uniform(0.2, 0.8)
                handles[stem].write(np.stack([mono * gain * (1 - pan), mono * gain * pan], axis=1))
    finally:
        for handle in handles.values():
            handle.close()


def _peak_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from the parent ids in /proc/PID/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def evaluate(root: Path, model: Path, out: Path) -> tuple[float, float, float]:
    """Run `karaoke evaluate` on the corpus at `root`; returns (wall seconds, driver peak MiB, largest
    other process's peak MiB)."""
    command = [
        sys.executable, "-m", "karaoke_cli", "evaluate", "--config", str(REPO / "configs" / "demo.yaml"),
        "--set", "corpus.layout=musdb", "--set", f"corpus.root={root}", "--set", "evaluation.split=test",
        "--dnn", str(model), "--out", str(out),
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=env)
    peaks: dict[int, int] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for pid in [proc.pid, *_descendants(proc.pid)]:
                peak = _peak_kib(pid)
                if peak is not None:
                    peaks[pid] = max(peaks.get(pid, 0), peak)
            done.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    code = proc.wait()
    done.set()
    watcher.join()
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"karaoke evaluate failed on {root} (exit {code})")
    driver = peaks.pop(proc.pid, 0)
    return seconds, driver / 1024, max(peaks.values(), default=0) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the long song")
    parser.add_argument("--short-minutes", type=float, default=10.0, help="length of the short song")
    parser.add_argument("--workdir", help="folder for the songs and outputs (default: a temporary one)")
    args = parser.parse_args()

    import torch

    from karaoke.config import load_config
    from karaoke.corpora.synth import synth_song
    from karaoke.models.dnn import build_model, save_dnn

    config = load_config(REPO / "configs" / "demo.yaml")
    segments = [synth_song(index, 0, TILE_SECONDS, RATE) for index in range(N_SEGMENTS)]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = save_dnn(tmp / "model", build_model(config), config, 0, {})
        results = {}
        for minutes in (args.short_minutes, args.minutes):
            root = tmp / f"corpus_{minutes:g}min"
            write_song(root / "test" / "song", minutes * 60, segments)
            results[minutes] = evaluate(root, model, tmp / f"out_{minutes:g}")
            for file in (root / "test" / "song").iterdir():
                file.unlink()
    print(f"model: demo width ({config.n_inputs} -> {config.dnn.hidden_sizes} -> {config.n_inputs}) and the IBM; "
          f"44.1 kHz stereo stems scored at {config.corpus.sample_rate} Hz; machine load {os.getloadavg()[0]:.1f}")
    for minutes, (seconds, driver, worker) in results.items():
        print(f"{minutes:g} min: {seconds:.0f} s wall ({minutes * 60 / seconds:.1f}x real time), "
              f"peak RSS: driver {driver:.0f} MiB, largest other process {worker:.0f} MiB")
    short, long = results[args.short_minutes], results[args.minutes]
    print(f"peak RSS ratio {args.minutes:g} min / {args.short_minutes:g} min: largest other process "
          f"{long[2] / short[2]:.2f}, driver {long[1] / short[1]:.2f} (bounded memory: about 1)")


if __name__ == "__main__":
    main()
