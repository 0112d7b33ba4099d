"""Training throughput of the paper-size network and of the widest MIR-1K network on one GPU.

    python benchmarks/gpu_dnn.py [--steps 60] [--peak-tflops 989]     # one prepared run, a few minutes
    python benchmarks/gpu_dnn.py --device cpu --small                   # the same code on a CPU, small sizes

The networks are those `karaoke.models.dnn.build_model` builds from a config:
- paper: configs/paper.yaml's network, 1025 x 20 windows (20500 inputs) -> 20500 -> 20500 (about 840M
  weights), SGD as the paper trains it;
- mir1k-wide: configs/mir1k.yaml with `dnn.hidden_sizes: [4096]` and its convolutional branch, Adam,
  the cross-entropy weighted by the mixture magnitude.
Each trains on random unit-scale windows (the speed of a step does not depend on the values) with
`train_epoch`, bfloat16 autocast on a GPU as in training. Printed per network: windows per second
(median over the timed chunks of steps, after warm-up), the dense layers' achieved TFLOP/s (6 FLOPs per
weight per window: forward, and backward to inputs and to weights), and its fraction of
`--peak-tflops` (the GPU's dense bfloat16 peak; 989 for an H100/H200 SXM).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from karaoke.config import load_config
from karaoke.models.dnn import (
    build_model,
    make_loss,
    make_optimizer,
    pick_device,
    train_epoch,
)

NETWORKS = {
    "paper": ("configs/paper.yaml", []),
    "mir1k-wide": ("configs/mir1k.yaml", ["dnn.hidden_sizes=[4096]"]),
}
SMALL = ["stft.n_fft=256", "stft.hop_length=64", "dnn.hidden_sizes=[128]"]


def dense_weights(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def measure(name: str, overrides: list[str], device: torch.device, steps: int, chunks: int) -> dict:
    config_path, extra = NETWORKS[name]
    config = load_config(config_path, extra + overrides)
    model = build_model(config).to(device)
    optimizer, loss_fn = make_optimizer(model, config.train), make_loss(config.train)
    batch = config.train.batch_size
    shape = (batch, config.stft.n_bins, config.windows.n_frames)
    windows = {"mixture": torch.rand(shape, device=device), "ibm": (torch.rand(shape, device=device) > 0.5).float()}

    def run(n: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_epoch(model, (windows for _ in range(n)), optimizer, loss_fn, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(3)  # warm-up: kernels chosen, optimizer state allocated
    rates = [steps * batch / run(steps) for _ in range(chunks)]
    weights = dense_weights(model)
    rate = statistics.median(rates)
    return {"name": name, "weights": weights, "windows_per_second": rate, "tflops": 6 * weights * rate / 1e12,
            "memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the GPU when there is one)")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed chunk")
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--small", action="store_true", help="small sizes, to try the script on a CPU")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{label}, torch {torch.__version__}")
    for name in NETWORKS:
        result = measure(name, SMALL if args.small else [], device, args.steps, args.chunks)
        memory = f", peak memory {result['memory_gib']:.1f} GiB" if result["memory_gib"] is not None else ""
        print(f"{name}: {result['weights'] / 1e6:.0f}M dense weights, {result['windows_per_second']:.0f} windows/s, "
              f"{result['tflops']:.1f} TFLOP/s = {result['tflops'] / args.peak_tflops:.1%} of {args.peak_tflops:.0f}{memory}",
              flush=True)


if __name__ == "__main__":
    main()
