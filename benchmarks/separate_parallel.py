"""`karaoke separate -j 2` against `-j 1` on a folder of MIR-1K clips, with the default model.

    python -m benchmarks.separate_parallel [--songs 40] [--small 10] [--repeats 3]

Writes `--songs` MIR-1K clips (every 8th of ../shared/data/mir1k/Wavfile, sorted; the mixture of
the two channels, mono 16 kHz WAV, as the model hears it) to a temporary folder, then:
- the whole command, `python -m karaoke_cli separate DIR -o OUT -d cpu -j J`, in a fresh process
  (imports, model load and, for -j 2, starting the local Ray cluster included), `--repeats` times
  each; prints the median seconds, songs/s and the ratio -j 2 / -j 1 (target >= 1.6x on 2 cores);
- the separation part alone and the peak memory, in a child process per run on `--small` and on
  `--songs` songs: -j 1 is the in-process loop (`Separator.separate_file` per song), -j 2 is
  `pipelines.separate.separate_on_ray` after `connect()` (its replicas' start and model load
  counted, Ray's start not). Peak RSS of the driver (`resource.getrusage`) and of each replica
  (its status rows) show whether memory grows with the number of songs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("KARAOKE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def write_songs(folder: Path, count: int) -> float:
    """`count` MIR-1K clips as mono 16 kHz WAV mixtures in `folder`; returns their seconds."""
    import soundfile as sf

    clips = sorted((SHARED / "mir1k" / "Wavfile").glob("*.flac"))[::8][:count]
    if len(clips) < count:
        raise SystemExit(f"{SHARED / 'mir1k' / 'Wavfile'}: {len(clips)} clips (every 8th) where {count} are needed")
    folder.mkdir(parents=True)
    seconds = 0.0
    for clip in clips:
        audio, rate = sf.read(clip, dtype="float32")
        sf.write(folder / f"{clip.stem}.wav", audio.mean(axis=1), rate, subtype="PCM_16")
        seconds += len(audio) / rate
    return seconds


def command(songs: Path, out: Path, jobs: int) -> float:
    """Wall seconds of the whole `karaoke separate` command in a fresh process."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "karaoke_cli", "separate", str(songs), "-o", str(out), "-d", "cpu", "-j", str(jobs)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def child(songs: str, out: str, jobs: int) -> None:
    """The separation part of one run in this process; prints seconds and peak RSS as JSON."""
    import resource

    from karaoke.separator import Separator
    from karaoke.storage import join
    from karaoke.tracks import input_files, track_names

    files = input_files([songs])
    pairs = list(zip(files, track_names(files)))
    replicas: dict[int, float] = {}
    ray_seconds = 0.0
    if jobs == 1:
        start = time.perf_counter()
        separator = Separator.from_pretrained(device="cpu")
        for path, track in pairs:
            separator.separate_file(path, join(out, separator.name, track))
        seconds = time.perf_counter() - start
    else:
        from pipelines.ray_runtime import connect
        from pipelines.separate import separate_on_ray

        start = time.perf_counter()
        connect()
        ray_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for row in separate_on_ray(pairs, join(out, "mir1k"), {"name_or_path": None, "device": "cpu"}, jobs=jobs):
            assert row["error"] is None, row["error"]
            replicas[row["replica"]] = max(replicas.get(row["replica"], 0.0), row["peak_mib"])
        seconds = time.perf_counter() - start
    driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    if jobs == 1:
        replicas[os.getpid()] = driver
    print(json.dumps({"seconds": seconds, "ray_seconds": ray_seconds, "driver_mib": driver, "replica_mib": sorted(replicas.values())}))


def run_child(songs: Path, out: Path, jobs: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.separate_parallel", "--child", str(songs), str(out), str(jobs)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=40)
    parser.add_argument("--small", type=int, default=10, help="the smaller folder of the memory comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("SONGS", "OUT", "JOBS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return

    with tempfile.TemporaryDirectory(prefix="karaoke-bench-") as tmp:
        tmp = Path(tmp)
        audio = {n: write_songs(tmp / f"songs{n}", n) for n in (args.small, args.songs)}
        print(f"{args.songs} MIR-1K clips, {audio[args.songs]:.0f} s of mono 16 kHz audio; default model; "
              f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f})")
        walls = {jobs: [] for jobs in (1, 2)}
        for repeat in range(args.repeats):
            for jobs in (1, 2):  # interleaved, so that a busy spell of the machine hits both
                walls[jobs].append(command(tmp / f"songs{args.songs}", tmp / f"cmd{jobs}_{repeat}", jobs))
        median = {jobs: statistics.median(times) for jobs, times in walls.items()}
        for jobs, seconds in median.items():
            print(f"whole command -j {jobs}: {seconds:.1f} s (median of {args.repeats}: "
                  f"{', '.join(f'{t:.1f}' for t in walls[jobs])}), {args.songs / seconds:.2f} songs/s")
        best = {jobs: min(times) for jobs, times in walls.items()}
        print(f"ratio -j 2 / -j 1 (whole command): {median[1] / median[2]:.2f}x of the medians (target >= 1.6x), "
              f"{best[1] / best[2]:.2f}x of the fastest runs (the least disturbed by other work on the machine)")
        parts = {(n, jobs): run_child(tmp / f"songs{n}", tmp / f"part{n}_{jobs}", jobs) for n in (args.small, args.songs) for jobs in (1, 2)}
        for n in (args.small, args.songs):
            one, two = parts[(n, 1)], parts[(n, 2)]
            print(f"{n} songs, separation alone: -j 1 {one['seconds']:.1f} s, -j 2 {two['seconds']:.1f} s "
                  f"(Ray's start before it: {two['ray_seconds']:.1f} s): {one['seconds'] / two['seconds']:.2f}x")
            print(f"{n} songs, peak RSS: -j 1 process {one['driver_mib']:.0f} MiB; -j 2 driver {two['driver_mib']:.0f} MiB, "
                  f"replicas {', '.join(f'{m:.0f}' for m in two['replica_mib'])} MiB")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
