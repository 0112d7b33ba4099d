"""Preparation throughput: the Ray Data job against a single-process loop doing the same work.

    python benchmarks/prepare.py                       # MIR-1K subset in ../shared/data (345 clips)
    python benchmarks/prepare.py --songs 100 --repeats 3
    python benchmarks/prepare.py --layout synth --songs 24

Both sides run `karaoke.dataset.prepare_song` (decode, mix, STFT, IBM, normalise, write shards) over
the same songs into a fresh folder. The loop runs in one process with one torch thread: it is the
floor per core, as each Ray task also gets one CPU (Ray sets OMP_NUM_THREADS=1 for it); it runs at
the niceness Ray gives its workers (15). The repeats alternate loop and Ray. Printed: audio-seconds
prepared per wall-second (median of the repeats) for each, their ratio, and the peak memory of the
Ray job (driver plus every Ray process it started) on half of the songs and on all of them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Ray starts its workers at this niceness; the loop runs at the same one, so that on a shared machine
# both sides get the same share of a busy CPU.
RAY_WORKER_NICENESS = 15


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, resident bytes) of every process, from /proc (Linux)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text().splitlines())
        except (OSError, ValueError):
            continue
        rss = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        table[int(entry)] = (int(fields["PPid"]), rss)
    return table


class PeakMemory:
    """Samples the summed RSS of this process and all its descendants (Ray's included) in a thread."""

    def __init__(self, interval: float = 0.05):
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self.largest = 0

    def _sample(self) -> int:
        """Summed RSS of the tree now; also keeps the largest single process seen."""
        table = _process_table()
        tree, total, frontier = {os.getpid()}, 0, [os.getpid()]
        while frontier:
            parent = frontier.pop()
            rss = table.get(parent, (0, 0))[1]
            total += rss
            self.largest = max(self.largest, rss)
            children = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in tree]
            tree.update(children)
            frontier.extend(children)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> "PeakMemory":
        self.peak = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def build_config(layout: str, songs: int, work: Path):
    """The corpus config of the run: the first `songs` MIR-1K clips linked into `work`, or a synth corpus."""
    import yaml

    from karaoke.config import apply_overrides, config_from_dict

    if layout == "mir1k":
        source = REPO.parent / "shared" / "data" / "mir1k" / "Wavfile"
        if not source.is_dir():
            raise SystemExit(f"{source}: MIR-1K subset not found; use --layout synth")
        clips = sorted(source.glob("*.flac"))[: songs or None]
        (work / "mir1k" / "Wavfile").mkdir(parents=True)
        for clip in clips:
            os.symlink(clip, work / "mir1k" / "Wavfile" / clip.name)
        data = yaml.safe_load((REPO / "configs" / "mir1k-paper.yaml").read_text())
        data = apply_overrides(data, [f"corpus.root={work / 'mir1k'}"])
    else:
        data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
        data = apply_overrides(data, [f"corpus.root={work / 'synth'}", f"corpus.synth_songs={songs or 24}"])
    return config_from_dict(data)


def _loop_process_init() -> None:
    import torch

    os.nice(RAY_WORKER_NICENESS)
    torch.set_num_threads(1)


def loop_once(config_dict: dict, out: str) -> float:
    """The same work as the Ray job, song after song in this (one-thread) process."""
    from karaoke.config import config_from_dict
    from karaoke.corpora import list_songs
    from karaoke.preparation import prepare_song, remix_partner_songs, write_manifest

    start = time.perf_counter()
    config = config_from_dict(config_dict)
    songs = list_songs(config.corpus)
    train_songs = [song for song in songs if song.split == "train"]
    statuses = [prepare_song(song, config, out, remix_partner_songs(song, train_songs, config)) for song in songs]
    write_manifest(out, config, statuses)
    return time.perf_counter() - start


def ray_once(config, out: str) -> tuple[float, PeakMemory]:
    from pipelines.prepare import prepare_dataset

    with PeakMemory() as memory:
        start = time.perf_counter()
        prepare_dataset(config, out)
        seconds = time.perf_counter() - start
    return seconds, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layout", choices=["mir1k", "synth"], default="mir1k")
    parser.add_argument("--songs", type=int, default=0, help="Number of songs (0: every MIR-1K clip, 24 synth).")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    work = Path(tempfile.mkdtemp(prefix="karaoke-bench-prepare-"))
    try:
        run(args, work)
    finally:
        # Every repeat writes a full dataset (GBs for the whole MIR-1K subset).
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    import ray

    from karaoke.config import config_from_dict, config_to_dict
    from karaoke.corpora import list_songs

    config = build_config(args.layout, args.songs, work)
    songs = list_songs(config.corpus)
    audio_seconds = sum(song.load(config.corpus.sample_rate, config.corpus.mixing).seconds for song in songs)
    load_before = os.getloadavg()[0]
    print(f"corpus: {args.layout}, {len(songs)} songs, {audio_seconds:.0f} s of audio")

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    # Worker processes and imports are paid once, as a long job pays them once.
    ray_once(config, str(work / "warmup"))
    loop_pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_loop_process_init)
    loop_pool.submit(loop_once, config_to_dict(config), str(work / "loop-warmup")).result()
    # Interleaved, so that both sides see the same load from whatever else runs on the machine.
    loop_times, ray_runs = [], []
    for i in range(args.repeats):
        loop_times.append(loop_pool.submit(loop_once, config_to_dict(config), str(work / f"loop{i}")).result())
        ray_runs.append(ray_once(config, str(work / f"ray{i}")))
    loop_pool.shutdown()
    half = config_to_dict(config)
    half_songs = songs[: len(songs) // 2]
    if args.layout == "mir1k":
        for clip in songs[len(songs) // 2 :]:
            os.unlink(work / "mir1k" / "Wavfile" / f"{clip.song_id}.flac")
    else:
        half["corpus"]["synth_songs"] = len(half_songs)
    _, half_memory = ray_once(config_from_dict(half), str(work / "ray-half"))
    ray.shutdown()

    loop_rate = audio_seconds / statistics.median(loop_times)
    ray_rate = audio_seconds / statistics.median(t for t, _ in ray_runs)
    full_peak = max(memory.peak for _, memory in ray_runs)
    full_largest = max(memory.largest for _, memory in ray_runs)
    half_peak, half_largest = half_memory.peak, half_memory.largest
    print(f"single-process loop (1 thread): {loop_rate:8.1f} audio-s/s   runs {', '.join(f'{t:.1f}' for t in loop_times)} s")
    print(f"Ray Data job (2 CPUs):          {ray_rate:8.1f} audio-s/s   runs {', '.join(f'{t:.1f}' for t, _ in ray_runs)} s")
    print(f"ratio Ray / loop: {ray_rate / loop_rate:.2f}x (target >= 1.6x)")
    print(f"load average during the run (1 min): {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(
        f"peak memory of the Ray job (driver + Ray processes): {len(half_songs)} songs {half_peak / 2**30:.2f} GiB, "
        f"{len(songs)} songs {full_peak / 2**30:.2f} GiB (ratio {full_peak / half_peak:.2f})"
    )
    print(
        f"largest single process: {len(half_songs)} songs {half_largest / 2**20:.0f} MiB, "
        f"{len(songs)} songs {full_largest / 2**20:.0f} MiB (ratio {full_largest / half_largest:.2f})"
    )


if __name__ == "__main__":
    main()
