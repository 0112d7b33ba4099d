"""NMF test-time fit speed: seconds of `nmf_vocal_probability` per minute of audio, against a
baseline measured in the same run, on real MIR-1K validation clips.

    python benchmarks/nmf_test_time.py [--config configs/mir1k.yaml] [--clips 3] [--repeats 3]
        [--threads 1] [--tolerance 1e-4] [--precision bfloat16] [--no-dnn]

The bases W_v, W_nv are random (seeded, values in [0.01, 1.01)) of the config's shape (D = n_bins x
T, K = nmf.n_components): the cost of the fit depends on the shapes and the iteration count only.
The baseline is `baseline_vocal_probability` below: the same updates through the general batched
`kl_h_step` (W^T 1 summed and W^T taken as a strided view at every step), kept here for comparison.
Printed: the median over repeats of seconds per audio-minute for the baseline and for the library
function with its defaults (float32, all `nmf.test_iterations`: the paper's fit), their ratio, and
the largest |p_baseline - p| over the clips.
`--tolerance` / `--precision` add a row for the library function with that option (its speed-up
and its difference from the baseline). Unless `--no-dnn`, the DNN's cost per audio-minute
(`karaoke.inference.soft_mask`, an untrained network of the config's shape) is printed alongside.
Torch runs `--threads` threads, as one evaluation task does (1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from karaoke.masks import pad_frames
from karaoke.models.nmf import (
    EPS,
    column_uniform,
    nmf_vocal_probability,
    unpack_windows,
)

# The baseline: the test-time fit through the general batched H step, fixed here so that the
# library's version is always measured against the same code.


def _baseline_ratio(V: torch.Tensor, W: torch.Tensor, H: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """V / (W H), (S, D, N), written into `out` when given (no (D, N) allocation per step).

    W and H are kept >= EPS (see `kl_w_update`), so W H >= K * EPS^2 > 0 needs no epsilon pass.
    """
    product = torch.bmm(W, H) if out is None else torch.bmm(W, H, out=out)
    return torch.div(V, product, out=product)


def baseline_kl_h_step(
    V: torch.Tensor, W: torch.Tensor, H: torch.Tensor, with_objective: bool = True, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One H update with W fixed. V (S, D, N), W (S, D, K), H (S, K, N) -> (new H, partial KL (S,)).

    The partial KL is sum(V log(V / WH) + WH) at the *incoming* W, H (float64; the caller subtracts
    sum V, a constant), or None when `with_objective` is False. `out` is (S, D, N) scratch space.
    """
    ratio = _baseline_ratio(V, W, H, out)
    numerator = torch.bmm(W.transpose(1, 2), ratio)
    w_sum = W.sum(1)
    objective = None
    if with_objective:
        # sum(WH) factorises as (1^T W)(H 1); V log(V / WH) reuses the ratio's memory once it is used.
        model_sum = (w_sum * H.sum(2)).sum(1).double()
        objective = torch.xlogy(V, ratio, out=ratio).sum((1, 2)).double() + model_sum
    # In place on the fresh numerator: no (S, K, N) temporaries.
    return numerator.div_(w_sum.unsqueeze(2) + EPS).mul_(H).clamp_min_(EPS), objective


def baseline_fit_activations(
    V: torch.Tensor, W: torch.Tensor, iterations: int, seed: int, keys: np.ndarray, mean: float
) -> torch.Tensor:
    """H (K, N) for data V (D, N) and fixed bases W (D, K) by `iterations` KL updates.

    Column n of the initial H depends only on (seed, keys[n]), so fitting in chunks of columns gives
    the same H as fitting them all. `mean` is the data's mean, which sets the initial scale.
    """
    n_components = W.shape[1]
    scale = mean / (n_components * max(float(W.mean()), EPS))
    H = (column_uniform(keys, n_components, seed, stream=0).to(V.device, V.dtype) * (2 * scale)).unsqueeze(0)
    V, W = V.unsqueeze(0), W.unsqueeze(0)
    scratch = torch.empty_like(V)
    for _ in range(iterations):
        H, _ = baseline_kl_h_step(V, W, H, with_objective=False, out=scratch)
    return H[0]


def baseline_vocal_probability(
    mixture: np.ndarray,
    W_v: torch.Tensor,
    W_nv: torch.Tensor,
    window_frames: int,
    iterations: int,
    seed: int = 0,
    chunk_windows: int = 2048,
) -> np.ndarray:
    """Soft vocal mask (n_bins, n_frames) of a unit-scale mixture magnitude (n_bins, n_frames).

    Each hop-1 window gets S_v = W_v H_v / (W_v H_v + W_nv H_nv) with H fitted for W = [W_v W_nv];
    bin (f, t) takes the mean of the S_v of every window covering it (Eq. 1). Windows are fitted in
    chunks of `chunk_windows` columns (on W's device) to bound memory; the result does not depend on it.
    """
    n_bins, n_frames = mixture.shape
    if W_v.shape != W_nv.shape or W_v.shape[0] != n_bins * window_frames:
        raise ValueError(
            f"bases {tuple(W_v.shape)} / {tuple(W_nv.shape)} do not fit {n_bins} bins x {window_frames} frames"
        )
    device, n_components = W_v.device, W_v.shape[1]
    W = torch.cat([W_v, W_nv], dim=1).float().clamp_min(EPS)
    columns = unpack_windows(pad_frames(mixture.astype(np.float32, copy=False), window_frames), window_frames)
    n_windows = columns.shape[1]
    mean = float(columns.mean()) if columns.size else 0.0
    total = torch.zeros(n_bins, n_windows + window_frames - 1, dtype=torch.float64, device=device)
    for start in range(0, n_windows, chunk_windows):
        V = torch.from_numpy(columns[:, start : start + chunk_windows]).to(device)
        keys = np.arange(start, start + V.shape[1], dtype=np.uint64)
        H = baseline_fit_activations(V, W, iterations, seed, keys, max(mean, EPS))
        vocal = W_v.float() @ H[:n_components]
        mask = vocal / (vocal + W_nv.float() @ H[n_components:] + EPS)
        # Window i covers frames i .. i+T-1: add its frame `offset` to frame i + offset.
        mask = mask.T.reshape(-1, n_bins, window_frames)
        for offset in range(window_frames):
            total[:, start + offset : start + offset + mask.shape[0]] += mask[:, :, offset].T
    counts = np.convolve(np.ones(n_windows), np.ones(window_frames))
    probability = (total.cpu().numpy() / counts).astype(np.float32)
    return probability[:, :n_frames]


def timed(function, *args, **kwargs) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mir1k.yaml")
    parser.add_argument("--clips", type=int, default=3, help="validation clips (every 40th, sorted by id)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance", type=float, help="also time nmf.test_tolerance at this value")
    parser.add_argument("--precision", choices=("bfloat16",), help="also time nmf.test_precision at this value")
    parser.add_argument("--no-dnn", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from karaoke.config import load_config
    from karaoke.corpora import list_songs
    from karaoke.features import song_features

    config = load_config(args.config)
    root = Path(config.corpus.root)
    if not root.is_dir():
        sys.exit(f"{root}: MIR-1K is not there (see ../shared/data/README.md)")
    split = config.evaluation.split
    songs = list_songs(config.corpus, split)[::40][: args.clips]
    mixtures = [song_features(s.load(config.corpus.sample_rate, config.corpus.mixing), config).mixture for s in songs]
    hop, rate = config.stft.hop_length, config.corpus.sample_rate
    minutes = sum(m.shape[1] for m in mixtures) * hop / rate / 60
    n_bins, T, K = config.stft.n_bins, config.windows.n_frames, config.nmf.n_components
    iterations, seed = config.nmf.test_iterations, config.nmf.seed
    generator = torch.Generator().manual_seed(0)
    W_v, W_nv = (torch.rand(n_bins * T, K, generator=generator) + 0.01 for _ in range(2))

    variants = {"library": {}}
    if args.tolerance is not None:
        variants[f"tolerance {args.tolerance:g}"] = {"tolerance": args.tolerance}
    if args.precision is not None:
        variants[f"precision {args.precision}"] = {"precision": args.precision}
    seconds: dict[str, list[float]] = {"baseline": [], **{name: [] for name in variants}}
    difference = {name: 0.0 for name in variants}
    for _ in range(args.repeats):
        # Baseline and variants alternate clip by clip, so that load from elsewhere hits them alike.
        totals = dict.fromkeys(seconds, 0.0)
        for mixture in mixtures:
            elapsed, reference = timed(baseline_vocal_probability, mixture, W_v, W_nv, T, iterations, seed)
            totals["baseline"] += elapsed
            for name, options in variants.items():
                elapsed, probability = timed(nmf_vocal_probability, mixture, W_v, W_nv, T, iterations, seed, **options)
                totals[name] += elapsed
                difference[name] = max(difference[name], float(np.abs(probability - reference).max()))
        for name, total in totals.items():
            seconds[name].append(total / minutes)

    per_minute = {name: statistics.median(values) for name, values in seconds.items()}
    print(
        f"{len(songs)} {split} clips of {config.corpus.root}, {minutes * 60:.1f} s of audio; D = {n_bins} x {T}, "
        f"K = {K} per source, {iterations} iterations, torch threads {torch.get_num_threads()}, "
        f"median of {args.repeats}"
    )
    print(f"  baseline: {per_minute['baseline']:.1f} s per audio-minute")
    for name in variants:
        print(
            f"  {name}: {per_minute[name]:.1f} s per audio-minute, {per_minute['baseline'] / per_minute[name]:.2f}x "
            f"faster, max |p - p_baseline| = {difference[name]:.2e}"
        )
    if not args.no_dnn:
        from karaoke.inference import soft_mask
        from karaoke.models.dnn import build_model

        model = build_model(config).eval()
        with torch.inference_mode():
            dnn = [sum(timed(soft_mask, model, m, T, 1.0)[0] for m in mixtures) / minutes for _ in range(args.repeats)]
        print(f"  DNN (untrained, {config.n_inputs} -> {list(config.hidden_sizes)}): {statistics.median(dnn):.2f} s per audio-minute")


if __name__ == "__main__":
    main()
