"""`karaoke separate -j 2` against `-j 1` (the plain path, no Ray) on full-length songs, default model, CPU.

    python -m benchmarks.separate_parallel [--minutes 12] [--song-minutes 3] [--repeats 3]

Songs: the MIR-1K clips of ../shared/data/mir1k/Wavfile (sorted) joined end to end into songs of
`--song-minutes`, `--minutes` of audio in all (the 345 clips hold 45), resampled to 44.1 kHz stereo
(voice centred, accompaniment to the left) and written as 16-bit FLAC, as a user's songs would be.
Each repeat runs the whole command, `python -m karaoke_cli separate DIR -o OUT -d cpu [-j 2]`, in a
fresh process timed from start to exit, in four configurations, interleaved so that a busy spell of
the shared machine hits them all:
- `-j 1`: one song at a time in the command's own process, torch on every core (the plain path);
- `-j 1` on one core (OMP_NUM_THREADS=1): the work of one replica of `-j 2` on 2 cores, so twice
  its throughput is the most `-j 2` can reach there. Its ratio to `-j 1` is what `-j 1` already
  gets from its second thread, which the song-level parallelism of `-j 2` cannot add again;
- `-j 2` cold: the command starts its own local Ray cluster, as a user typing it gets;
- `-j 2` warm: a cluster already running (`ray start --head`, joined through RAY_ADDRESS), so Ray's
  start is not counted; its replicas' start and model load are.
Prints each configuration's median seconds, seconds per minute of audio and songs per minute, and
each ratio to `-j 1` as the median of the repeats' paired ratios (target for `-j 2`: >= 1.6x on 2
cores). Then, once, the peak resident memory of `-j 1`'s process and of `-j 2`'s driver and replicas
(their status rows) on a quarter of the songs and on all of them: flat in the number of songs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("KARAOKE_SHARED_DATA", REPO.parent / "shared" / "data"))
RATE = 44100
CONFIGURATIONS = ("-j 1", "-j 1, one core", "-j 2 cold", "-j 2 warm")


def write_songs(folder: Path, minutes: float, song_minutes: float) -> list[Path]:
    """Songs of `song_minutes` (the last one shorter) made of consecutive MIR-1K clips, `minutes` in
    all, as 44.1 kHz stereo FLAC in `folder`."""
    import numpy as np
    import soundfile as sf

    from karaoke.audio import resample

    clips = sorted((SHARED / "mir1k" / "Wavfile").glob("*.flac"))
    folder.mkdir(parents=True)
    songs, pending, pending_s, total_s = [], [], 0.0, 0.0
    for clip in clips:
        audio, rate = sf.read(clip, dtype="float32")  # (n, 2): accompaniment, voice
        pending.append(audio)
        pending_s += len(audio) / rate
        total_s += len(audio) / rate
        last = total_s >= minutes * 60 or clip == clips[-1]
        if pending_s >= song_minutes * 60 or last:
            accompaniment, voice = np.concatenate(pending).T
            stereo = resample(0.5 * np.stack([accompaniment + voice, 0.7 * accompaniment + voice]), rate, RATE)
            songs.append(folder / f"song_{len(songs):02d}.flac")
            sf.write(songs[-1], stereo.T, RATE, subtype="PCM_16")
            pending, pending_s = [], 0.0
        if last:
            break
    if total_s < minutes * 60 - 1:
        raise SystemExit(f"{SHARED / 'mir1k' / 'Wavfile'}: {total_s / 60:.1f} minutes of clips where {minutes} are needed")
    return songs


def command(songs: Path, out: Path, jobs: int, env: dict[str, str]) -> float:
    """Wall seconds of the whole `karaoke separate` command in a fresh process."""
    args = ["separate", str(songs), "-o", str(out), "-d", "cpu", "-j", str(jobs)]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "karaoke_cli", *args], check=False, capture_output=True, text=True, env={**os.environ, **env}
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"karaoke {' '.join(args)} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds


def child(songs: str, out: str, jobs: int) -> None:
    """One run's separation in this process; prints the peak RSS of this process and of each
    replica as JSON."""
    from karaoke.separator import Separator
    from karaoke.storage import join
    from karaoke.tracks import input_files, track_names

    files = input_files([songs])
    pairs = list(zip(files, track_names(files)))
    replicas: dict[int, float] = {}
    if jobs == 1:
        separator = Separator.from_pretrained(device="cpu")
        for path, track in pairs:
            separator.separate_file(path, join(out, separator.name, track))
    else:
        from pipelines.ray_runtime import connect
        from pipelines.separate import separate_on_ray

        connect()
        for row in separate_on_ray(pairs, join(out, "mir1k"), {"name_or_path": None, "device": "cpu"}, jobs=jobs):
            assert row["error"] is None, row["error"]
            replicas[row["replica"]] = max(replicas.get(row["replica"], 0.0), row["peak_mib"])
    driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"driver_mib": driver, "replica_mib": sorted(replicas.values())}))


def run_child(songs: Path, out: Path, jobs: int, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.separate_parallel", "--child", str(songs), str(out), str(jobs)],
        check=True, capture_output=True, text=True, env={**os.environ, **env}, cwd=REPO,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12.0, help="minutes of audio in all (at most 45)")
    parser.add_argument("--song-minutes", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("SONGS", "OUT", "JOBS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return

    import soundfile as sf

    from tests.ray_head import private_head

    with tempfile.TemporaryDirectory(prefix="karaoke-bench-") as tmp:
        tmp = Path(tmp)
        songs = write_songs(tmp / "songs", args.minutes, args.song_minutes)
        quarter = tmp / "quarter"
        quarter.mkdir()
        for song in songs[: max(len(songs) // 4, 1)]:
            (quarter / song.name).symlink_to(song)
        audio_minutes = sum(sf.info(song).duration for song in songs) / 60
        print(f"{len(songs)} songs, {audio_minutes:.1f} minutes of 44.1 kHz stereo FLAC made of MIR-1K clips; default model; "
              f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f})")
        walls: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
        for repeat in range(args.repeats):
            out = tmp / f"out{repeat}"
            walls["-j 1"].append(command(tmp / "songs", out / "j1", 1, {}))
            walls["-j 1, one core"].append(command(tmp / "songs", out / "j1core", 1, {"OMP_NUM_THREADS": "1"}))
            walls["-j 2 cold"].append(command(tmp / "songs", out / "j2cold", 2, {}))
            with private_head("--num-cpus=2", "--include-dashboard=true") as head:
                warm = {**head.env, "RAY_ADDRESS": head.gcs_address}
                walls["-j 2 warm"].append(command(tmp / "songs", out / "j2warm", 2, warm))
            print(f"repeat {repeat + 1}: " + ", ".join(f"{name} {walls[name][-1]:.1f} s" for name in CONFIGURATIONS)
                  + f" (load average {os.getloadavg()[0]:.1f})", flush=True)
        for name in CONFIGURATIONS:
            seconds = statistics.median(walls[name])
            ratios = [one / this for one, this in zip(walls["-j 1"], walls[name])]
            print(f"{name}: {seconds:.1f} s (median of {args.repeats}), {seconds / audio_minutes:.2f} s per minute of audio, "
                  f"{len(songs) / seconds * 60:.1f} songs/min; against -j 1: {statistics.median(ratios):.2f}x "
                  f"(paired ratios {', '.join(f'{r:.2f}' for r in ratios)})")
        ceiling = [2 * one / core for one, core in zip(walls["-j 1"], walls["-j 1, one core"])]
        print(f"ceiling of -j 2 on 2 cores (twice the one-core throughput) against -j 1: {statistics.median(ceiling):.2f}x "
              "(target >= 1.6x)")
        for name in ("-j 2 cold", "-j 2 warm"):
            ratios = [core / this for core, this in zip(walls["-j 1, one core"], walls[name])]
            print(f"{name} against -j 1 on one core: {statistics.median(ratios):.2f}x (at most 2x on 2 free cores; "
                  f"paired ratios {', '.join(f'{r:.2f}' for r in ratios)})")

        with private_head("--num-cpus=2", "--include-dashboard=true") as head:
            warm = {**head.env, "RAY_ADDRESS": head.gcs_address}
            memory = {(folder.name, jobs): run_child(folder, tmp / f"memory_{folder.name}_{jobs}", jobs, warm)
                      for folder in (quarter, tmp / "songs") for jobs in (1, 2)}
        for folder in ("quarter", "songs"):
            one, two = memory[(folder, 1)], memory[(folder, 2)]
            count = len(list((tmp / folder).iterdir()))
            print(f"{count} songs, peak RSS: -j 1 process {one['driver_mib']:.0f} MiB; -j 2 driver {two['driver_mib']:.0f} MiB, "
                  f"replicas {', '.join(f'{m:.0f}' for m in two['replica_mib'])} MiB")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
