"""Ray Train epoch throughput against a bare single-process PyTorch loop, same data and model.

    python -m benchmarks.train_dnn [--epochs 3] [--songs 6]

Prepares a synthetic dataset with the demo config's corpus and a fixed model (513 x 20 windows, one
512-unit hidden layer, batch 100, SGD: overrides below, whatever configs/demo.yaml uses), windows every 4 frames, then trains the same network on the same
windows (a) in this process with `train_epoch` over in-memory batches (the baseline, measured before
and after the Ray runs), (b) with `pipelines.train_dnn` on 1 Ray Train worker and (c) on 2 workers
(DDP). Throughput is windows per second of an epoch's training pass (median over epochs; worker
start-up and checkpointing excluded on both sides). Target: Ray 1 worker >= 0.85x the bare loop.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def bare_loop(config, dataset: str, epochs: int) -> list[float]:
    """Windows per second of each epoch of a plain PyTorch loop over the split held in memory."""
    import numpy as np
    import torch

    from karaoke.dataset import read_windows
    from karaoke.models.dnn import build_model, make_loss, make_optimizer, train_epoch

    rows = read_windows(dataset, "train", ["mixture", "ibm"])
    mixture, ibm = torch.from_numpy(rows["mixture"]), torch.from_numpy(rows["ibm"])
    torch.manual_seed(config.train.seed)
    model = build_model(config)
    optimizer, loss_fn = make_optimizer(model, config.train), make_loss(config.train)
    rates = []
    for epoch in range(epochs):
        order = torch.from_numpy(np.random.default_rng(epoch).permutation(len(mixture)))
        size = config.train.batch_size
        start = time.perf_counter()
        batches = ({"mixture": mixture[order[i : i + size]], "ibm": ibm[order[i : i + size]]} for i in range(0, len(order), size))
        stats = train_epoch(model, batches, optimizer, loss_fn, torch.device("cpu"))
        rates.append(stats.n_windows / (time.perf_counter() - start))
    return rates


def ray_rates(config, dataset: str, run_dir: str) -> list[float]:
    from pipelines.train_dnn import train_dnn

    result = train_dnn(config, dataset, run_dir)
    card = json.loads((Path(result.checkpoint_path) / "checkpoint.json").read_text())
    return [epoch["windows_per_second"] for epoch in card["history"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--songs", type=int, default=6)
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

    import ray

    from karaoke.config import load_config
    from karaoke.dataset import load_manifest
    from pipelines.prepare import prepare_dataset

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"corpus.root={tmp}/corpus",
            f"corpus.synth_songs={args.songs}",
            "windows.train_hop=4",
            f"train.epochs={args.epochs}",
            # The benchmark's own model and recipe, fixed whatever the demo uses: 513 x 20 windows, one
            # 512-unit layer, SGD at batch 100 (the paper's recipe).
            "corpus.synth_seconds=20",
            "stft.n_fft=1024",
            "stft.hop_length=256",
            "dnn.hidden_sizes=[512]",
            "dnn.bias_offset=6",
            "dnn.log_input_gain=0",
            "train.optimizer=sgd",
            "train.learning_rate=0.1",
            "train.batch_size=100",
        ]
        config = load_config("configs/demo.yaml", overrides)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            prepare_dataset(config, f"{tmp}/dataset")
            windows = load_manifest(f"{tmp}/dataset")["splits"]["train"]["windows"]
            before = bare_loop(config, f"{tmp}/dataset", args.epochs)
            one = ray_rates(load_config("configs/demo.yaml", overrides + ["train.num_workers=1"]), f"{tmp}/dataset", f"{tmp}/run1")
            two = ray_rates(load_config("configs/demo.yaml", overrides + ["train.num_workers=2"]), f"{tmp}/dataset", f"{tmp}/run2")
            after = bare_loop(config, f"{tmp}/dataset", args.epochs)
        finally:
            ray.shutdown()
    bare = statistics.median(before + after)
    print(f"data: {windows} training windows of {config.stft.n_bins} x {config.windows.n_frames}; model "
          f"{config.n_inputs} -> {config.hidden_sizes} -> {config.n_inputs}; batch {config.train.batch_size}; "
          f"{args.epochs} epochs; load average {os.getloadavg()[0]:.1f}")
    print(f"bare PyTorch loop: {bare:.0f} windows/s (median of {len(before + after)} epochs, before and after)")
    for name, rates in (("Ray Train, 1 worker", one), ("Ray Train, 2 workers (DDP)", two)):
        rate = statistics.median(rates)
        print(f"{name}: {rate:.0f} windows/s (median of {len(rates)} epochs) -> {rate / bare:.2f}x the bare loop (target >= 0.85x)")


if __name__ == "__main__":
    main()
