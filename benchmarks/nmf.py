"""NMF speed: one KL-NMF iteration against the bare matrix products it needs, and 2 vs 1 Ray workers.

    python benchmarks/nmf.py [--device cuda]       (two sizes: paper K = 1500, and a small K = 200)
    python benchmarks/nmf.py --inputs 20500 --columns 15000 --components 1500 --device cuda  (paper size)
    python benchmarks/nmf.py --ray                 (adds 2-worker vs 1-worker Ray Train)

1. Iteration vs floor. An iteration of `karaoke.models.nmf.fit_nmf` (S = 2 sources) needs four
   batched products of D x N x K: W H twice (before the H and before the W update), W^T R and R H^T.
   The floor is those four `torch.bmm` calls on tensors of the same shapes, done bare in the same
   run (writing the (D, N) products into one preallocated tensor, as the loop does); the iteration time is read between consecutive `on_iteration` calls of the real loop, so
   it includes the element-wise work, the objective and the updates. Target: ratio <= 1.3.
   The element-wise work is O(D N) against O(D N K) for the products, so the ratio falls as K grows.
2. Ray Train: the same fit (`pipelines.train_nmf.fit_bases`) with 1 and with 2 workers on one
   random dataset; compares the median per-iteration time measured inside the training loop and
   the wall time of the whole fit (which includes starting the worker group).
Timings are medians of repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time


def iteration_seconds(V, keys, n_components: int, iterations: int) -> list[float]:
    """Wall time of each iteration of the real `fit_nmf` loop (the first, warm-up one dropped)."""
    import torch

    from karaoke.models.nmf import fit_nmf

    stamps: list[float] = []

    def on_iteration(iteration, W, H, kl) -> None:
        if V.is_cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    fit_nmf(V, keys, n_components, iterations + 1, seed=0, on_iteration=on_iteration)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def floor_seconds(V, n_components: int, repeats: int) -> list[float]:
    """Wall time of the iteration's four batched products done bare, per repeat."""
    import torch

    n_sources, n_inputs, n_columns = V.shape
    W = torch.rand(n_sources, n_inputs, n_components, device=V.device)
    H = torch.rand(n_sources, n_components, n_columns, device=V.device)
    product = torch.empty_like(V)
    times = []
    for _ in range(repeats + 1):
        if V.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.bmm(W, H, out=product)
        torch.bmm(W.transpose(1, 2), product)
        torch.bmm(W, H, out=product)
        torch.bmm(product, H.transpose(1, 2))
        if V.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[1:]


def bench_iteration(n_inputs: int, n_columns: int, n_components: int, repeats: int, device: str) -> float:
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(0)
    V = (torch.rand(2, n_inputs, n_columns, generator=generator) ** 4).to(device)
    keys = np.arange(n_columns, dtype=np.uint64)
    # Interleave the two measurements so that load from other processes hits both alike.
    ours, floor = [], []
    for _ in range(repeats):
        ours += iteration_seconds(V, keys, n_components, 2)
        floor += floor_seconds(V, n_components, 2)
    ratio = statistics.median(ours) / statistics.median(floor)
    print(
        f"NMF iteration, D={n_inputs} N={n_columns} K={n_components} x2 sources on {device} "
        f"(torch threads {torch.get_num_threads()}): {statistics.median(ours) * 1e3:.1f} ms; "
        f"bare products {statistics.median(floor) * 1e3:.1f} ms; ratio {ratio:.2f}x (target <= 1.3x)"
    )
    return ratio


def _random_windows(batch, n_bins: int, n_frames: int):
    import numpy as np

    ids = batch["id"]
    rng = np.random.default_rng(int(ids[0]))
    shape = (len(ids), n_bins, n_frames)
    return {
        "song_id": np.array([f"song{i // 100:04d}" for i in ids]),
        "start_frame": (ids % 100) * 60,
        "vocals": (rng.random(shape) ** 4).astype(np.float16),
        "accompaniment": (rng.random(shape) ** 4).astype(np.float16),
    }


def bench_ray(n_columns: int, n_components: int, iterations: int, repeats: int) -> None:
    import json
    import os
    import tempfile

    import ray

    from karaoke.config import config_from_dict
    from pipelines.train_nmf import fit_bases

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    stft, windows = {"n_fft": 512, "hop_length": 128}, {"n_frames": 20}
    dataset = ray.data.range(n_columns, override_num_blocks=4).map_batches(
        _random_windows, fn_kwargs={"n_bins": 257, "n_frames": 20}, batch_size=250
    ).materialize()
    results: dict[int, tuple[list[float], list[float]]] = {1: ([], []), 2: ([], [])}
    try:
        for _ in range(repeats):
            for workers in (1, 2):
                nmf = {"n_components": n_components, "train_iterations": iterations, "num_workers": workers}
                nmf["checkpoint_every"] = iterations
                config = config_from_dict({"stft": stft, "windows": windows, "nmf": nmf})
                with tempfile.TemporaryDirectory() as run_dir:
                    start = time.perf_counter()
                    fit_bases(config, dataset, run_dir)
                    wall = time.perf_counter() - start
                    rows = json.loads(open(f"{run_dir}/objective.json").read())
                per_iteration = statistics.median(row["seconds"] for row in rows[1:])
                results[workers][0].append(per_iteration)
                results[workers][1].append(wall)
    finally:
        ray.shutdown()
    one, two = (statistics.median(results[w][0]) for w in (1, 2))
    one_wall, two_wall = (statistics.median(results[w][1]) for w in (1, 2))
    print(
        f"Ray Train NMF, D=5140 N={n_columns} K={n_components}, {iterations} iterations: per iteration "
        f"1 worker {one * 1e3:.1f} ms, 2 workers {two * 1e3:.1f} ms, speed-up {one / two:.2f}x; whole fit "
        f"1 worker {one_wall:.1f} s, 2 workers {two_wall:.1f} s"
    )


# (D, N, K): K as in the paper with N = 2K windows, and a small K where the O(D N) element-wise work
# weighs most against the O(D N K) products.
PRESETS = ((1300, 3000, 1500), (5140, 1000, 200))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, help="D: window length n_bins * T (paper 20500).")
    parser.add_argument("--columns", type=int, help="N: windows (paper ~15000).")
    parser.add_argument("--components", type=int, help="K: bases per source (paper 1500).")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ray", action="store_true", help="Also time 2 vs 1 Ray Train workers.")
    parser.add_argument("--ray-columns", type=int, default=2000)
    parser.add_argument("--ray-components", type=int, default=200)
    parser.add_argument("--ray-iterations", type=int, default=10)
    args = parser.parse_args()
    sizes = (args.inputs, args.columns, args.components)
    for n_inputs, n_columns, n_components in PRESETS if sizes == (None, None, None) else (sizes,):
        if None in (n_inputs, n_columns, n_components):
            parser.error("give all of --inputs, --columns and --components, or none")
        bench_iteration(n_inputs, n_columns, n_components, args.repeats, args.device)
    if args.ray:
        bench_ray(args.ray_columns, args.ray_components, args.ray_iterations, max(1, args.repeats // 2))


if __name__ == "__main__":
    main()
