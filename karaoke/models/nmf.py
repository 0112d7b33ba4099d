"""The NMF baseline: KL-divergence NMF (Lee & Seung multiplicative updates) on unpacked windows.

Dimension names: a window is (n_bins, T) unpacked bin-major to D = n_bins * T values; a data matrix
V is (S, D, N) (S independent problems batched, N windows as columns), bases W are (S, D, K) and
activations H are (S, K, N).

Training learns W_v from the vocal windows and W_nv from the accompaniment windows (S = 2). With
R = V / (W H) the updates minimising D_KL(V || W H) = sum V log(V / WH) - V + WH are

    H <- H * (W^T R) / (W^T 1)          W <- W * (R H^T) / (1 H^T)

The W update's numerator R H^T and denominator H 1 are sums over columns, so workers that each hold
a shard of the columns (and that shard's H) sum them with an allreduce and all apply the same W
update: distributed NMF equals single-process NMF. For that to hold from the first iteration, W
starts from a seeded generator and each column of H from a hash of (seed, source, column key), so the
initial values do not depend on how the columns are sharded.

Test time: W = [W_v W_nv] fixed, H updated by the same rule on the hop-1 windows of the mixture, and
the soft mask S_v = W_v H_v / (W_v H_v + W_nv H_nv) is averaged over overlapping windows (Eq. 1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from karaoke.config import CHECKPOINT_SECTIONS, ExperimentConfig
from karaoke.errors import CheckpointError
from karaoke.masks import sliding_windows

if TYPE_CHECKING:
    from karaoke.inference import WindowAverage

# Floor of W and H, and of the update denominators: keeps W H > 0 (silent input, dead bases), so
# nothing is NaN. EPS^2 is still a normal float32.
EPS = 1e-10
KIND = "nmf"
SOURCES = ("vocals", "accompaniment")
Allreduce = Callable[[torch.Tensor], None]
Precision = Literal["float32", "bfloat16"]
PRODUCT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Windows fitted at once at test time: two (D, n) float32 buffers, 2 x 84 MB for D = 513 x 20.
DEFAULT_CHUNK_WINDOWS = 2048
# With a test-time tolerance, iterations between two checks of each window's KL divergence.
TOLERANCE_EVERY = 5


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def window_keys(song_ids: Sequence[str], start_frames: np.ndarray) -> np.ndarray:
    """A stable uint64 key per training window (song id, start frame): seeds its column of H."""
    song_hash = np.array(
        [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") for s in song_ids],
        dtype=np.uint64,
    )
    return _splitmix64(song_hash ^ np.asarray(start_frames, dtype=np.uint64))


def column_uniform(keys: np.ndarray, n_rows: int, seed: int, stream: int) -> torch.Tensor:
    """(n_rows, len(keys)) values in [0.01, 1.01), each column a function of (seed, stream, key) only."""
    salt = _splitmix64(np.array([(seed & 0xFFFFFFFF) << 32 | (stream & 0xFFFFFFFF)], dtype=np.uint64))
    base = _splitmix64(np.asarray(keys, dtype=np.uint64) ^ salt)
    with np.errstate(over="ignore"):
        bits = _splitmix64(base[None, :] + np.arange(n_rows, dtype=np.uint64)[:, None])
    return torch.from_numpy((bits >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24) + np.float32(0.01))


def _ratio(V: torch.Tensor, W: torch.Tensor, H: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """V / (W H), (S, D, N), written into `out` when given (no (D, N) allocation per step).

    W and H are kept >= EPS (see `kl_w_update`), so W H >= K * EPS^2 > 0 needs no epsilon pass.
    """
    product = torch.bmm(W, H) if out is None else torch.bmm(W, H, out=out)
    return torch.div(V, product, out=product)


def kl_h_step(
    V: torch.Tensor, W: torch.Tensor, H: torch.Tensor, with_objective: bool = True, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One H update with W fixed. V (S, D, N), W (S, D, K), H (S, K, N) -> (new H, partial KL (S,)).

    The partial KL is sum(V log(V / WH) + WH) at the *incoming* W, H (float64; the caller subtracts
    sum V, a constant), or None when `with_objective` is False. `out` is (S, D, N) scratch space.
    """
    ratio = _ratio(V, W, H, out)
    numerator = torch.bmm(W.transpose(1, 2), ratio)
    w_sum = W.sum(1)
    objective = None
    if with_objective:
        # sum(WH) factorises as (1^T W)(H 1); V log(V / WH) reuses the ratio's memory once it is used.
        model_sum = (w_sum * H.sum(2)).sum(1).double()
        objective = torch.xlogy(V, ratio, out=ratio).sum((1, 2)).double() + model_sum
    # In place on the fresh numerator: no (S, K, N) temporaries.
    return numerator.div_(w_sum.unsqueeze(2) + EPS).mul_(H).clamp_min_(EPS), objective


def kl_w_statistics(
    V: torch.Tensor, W: torch.Tensor, H: torch.Tensor, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The W update's numerator (V / WH) H^T (S, D, K) and denominator H 1 (S, K): sums over columns."""
    return torch.bmm(_ratio(V, W, H, out), H.transpose(1, 2)), H.sum(2)


def kl_w_update(W: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """W * numerator / denominator for the (allreduced) statistics of `kl_w_statistics`.

    Entries are floored at EPS (as H is in `kl_h_step`): a silent column or a dead basis would
    otherwise reach 0 and make W H = 0 somewhere, so V / WH = 0 / 0.
    """
    return numerator.div(denominator.unsqueeze(1) + EPS).mul_(W).clamp_min_(EPS)


def init_bases(n_sources: int, n_inputs: int, n_components: int, seed: int, mean: torch.Tensor) -> torch.Tensor:
    """Seeded W (S, D, K) scaled so that W H starts near the data's per-source mean (S,)."""
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(n_sources, n_inputs, n_components, generator=generator) + 0.01
    return uniform * (2 * (mean.cpu().float() / n_components).sqrt()).view(-1, 1, 1)


def fit_nmf(
    V: torch.Tensor,
    keys: np.ndarray,
    n_components: int,
    iterations: int,
    seed: int = 0,
    W: torch.Tensor | None = None,
    start_iteration: int = 0,
    allreduce: Allreduce | None = None,
    on_iteration: Callable[[int, torch.Tensor, torch.Tensor, np.ndarray], None] | None = None,
    H: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
    """Learn bases W (S, D, K) of data V (S, D, N) whose columns have uint64 `keys` (N,).

    With `allreduce` (an in-place sum over workers, e.g. torch.distributed.all_reduce) V is this
    worker's shard of the columns and the result equals the fit of all columns at once. `W`,
    `start_iteration` and `H` (S, K, N) resume a fit exactly; without `H`, H starts again from its
    seed. `on_iteration(i, W, H, kl)` is called after each iteration with the factors it left and
    the KL divergence (S,) of all columns at the start of iteration i.
    Returns (W, this shard's H (S, K, N), the KL per iteration).
    """
    n_sources, n_inputs, _ = V.shape
    # Step 1. Global sums of V (for the initial scale); the local sum turns this shard's partial
    # objective into its share of the KL, which is what workers add up.
    local_sum = V.sum((1, 2), dtype=torch.float64)
    totals = torch.cat([local_sum, torch.tensor([V.shape[2]], dtype=torch.float64, device=V.device)])
    if allreduce is not None:
        allreduce(totals)
    mean = (totals[:n_sources] / (n_inputs * max(totals[n_sources].item(), 1.0))).clamp_min(EPS)
    # Step 2. Seeded W, per-column seeded H.
    if W is None:
        W = init_bases(n_sources, n_inputs, n_components, seed, mean)
    W = W.to(V.device, V.dtype).clamp_min(EPS)
    if H is None:
        h_scale = (2 * (mean / n_components).sqrt()).to(V.device, V.dtype).view(-1, 1, 1)
        H = torch.stack([column_uniform(keys, n_components, seed, s) for s in range(n_sources)]).to(V.device) * h_scale
    else:
        H = H.to(V.device, V.dtype).clone()
    # Step 3. Alternate H and W updates; W statistics and the objective are summed over workers.
    objectives, scratch = [], torch.empty_like(V)
    for iteration in range(start_iteration, iterations):
        H, partial = kl_h_step(V, W, H, out=scratch)
        numerator, denominator = kl_w_statistics(V, W, H, out=scratch)
        kl = partial - local_sum
        if allreduce is not None:
            # One collective per iteration: the statistics and the objective packed together.
            packed = torch.cat([numerator.flatten(), denominator.flatten(), kl.to(V.dtype)])
            allreduce(packed)
            n_num, n_den = numerator.numel(), denominator.numel()
            numerator = packed[:n_num].view_as(numerator)
            denominator = packed[n_num : n_num + n_den].view_as(denominator)
            kl = packed[n_num + n_den :]
        W = kl_w_update(W, numerator, denominator)
        kl = kl.double().cpu().numpy()
        objectives.append(kl)
        if on_iteration is not None:
            on_iteration(iteration, W, H, kl)
    return W, H, objectives


def unpack_windows(spec: np.ndarray, window_frames: int) -> np.ndarray:
    """Hop-1 windows of (n_bins, n_frames) as columns: (n_bins * T, n_windows), bin-major."""
    windows = sliding_windows(spec, window_frames)
    return np.ascontiguousarray(windows.reshape(windows.shape[0], -1).T)


def fit_activations(
    V: torch.Tensor,
    W: torch.Tensor,
    iterations: int,
    seed: int,
    keys: np.ndarray,
    mean: float,
    tolerance: float = 0.0,
    precision: Precision = "float32",
) -> torch.Tensor:
    """H (K, N) float32 for data V (D, N) and fixed bases W (D, K) by `iterations` KL updates.

    The update is `kl_h_step`'s, H <- max(H * (W^T (V / WH)) / (W^T 1 + EPS), EPS), for one problem
    with every buffer allocated once: an iteration is two matrix products, one element-wise pass over
    (D, N) and three over (K, N); W^T 1 is computed once, W being fixed.

    Column n of the initial H depends only on (seed, keys[n]) and, W being fixed, each column is its
    own problem, so fitting in chunks of columns gives the same H as fitting them all. `mean` is the
    data's mean, which sets the initial scale. `tolerance` > 0 stops a column once its KL divergence
    fell by less than that fraction over `TOLERANCE_EVERY` iterations (0: every column gets all
    `iterations`). `precision` "bfloat16" does the two products in bfloat16 (about twice as fast
    on CPUs with AVX512-BF16; H stays float32).
    """
    n_inputs, n_columns = V.shape
    n_components = W.shape[1]
    scale = mean / (n_components * max(float(W.mean()), EPS))
    H = column_uniform(keys, n_components, seed, stream=0).to(V.device) * (2 * scale)
    V = V.to(torch.float32).contiguous()
    W = W.to(torch.float32).contiguous()
    denominator = (W.sum(0) + EPS).unsqueeze(1)  # (K, 1)
    dtype = PRODUCT_DTYPES[precision]
    # W^T made contiguous once: both products then read their left factor row by row.
    W_left = W.to(dtype)
    W_right = W_left.T.contiguous()
    if tolerance > 0:
        return _fit_until_converged(V, W, W_left, W_right, denominator, H, iterations, tolerance)
    product = torch.empty(n_inputs, n_columns, dtype=dtype, device=V.device)
    numerator = torch.empty(n_components, n_columns, dtype=dtype, device=V.device)
    for _ in range(iterations):
        torch.div(V, torch.mm(W_left, H.to(dtype), out=product), out=product)
        _apply_update(H, torch.mm(W_right, product, out=numerator), denominator)
    return H


def _apply_update(H: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> None:
    """H (K, N) <- max(H * numerator / denominator, EPS) in place, as `kl_h_step` rounds it
    (numerator / denominator first); numerator (K, N) is overwritten, denominator is (K, 1)."""
    ratio = numerator.div_(denominator) if numerator.dtype == H.dtype else numerator.float().div_(denominator)
    H.mul_(ratio).clamp_min_(EPS)


def _fit_until_converged(
    V: torch.Tensor,
    W: torch.Tensor,
    W_left: torch.Tensor,
    W_right: torch.Tensor,
    denominator: torch.Tensor,
    H: torch.Tensor,
    iterations: int,
    tolerance: float,
) -> torch.Tensor:
    """`fit_activations` with a per-column stopping rule: V (D, N), W (D, K) float32, W_left (D, K)
    and W_right (K, D) in the products' dtype, denominator (K, 1), initial H (K, N) -> fitted H (K, N).

    Every `TOLERANCE_EVERY` iterations, before the update, each column's KL(V_n || W H_n) =
    sum V log V - V - V log WH + WH is compared with its value at the previous check; a column whose
    relative decrease since then is below `tolerance` keeps its current H and leaves the active set,
    so later iterations multiply only the active columns. The check costs a log over (D, N), about a
    tenth of an iteration, hence not every iteration; its W H is float32 whatever the precision, as
    bfloat16 rounding would swamp the small decreases it looks for.
    """
    fitted = H.clone()
    active = torch.arange(H.shape[1], device=H.device)
    w_sum = W.sum(0, dtype=torch.float64)
    # The part of the KL that does not depend on H; float64 so that small relative changes show.
    constant = (torch.xlogy(V, V) - V).sum(0, dtype=torch.float64)
    previous = torch.full_like(constant, float("inf"))
    product = torch.empty(V.shape, dtype=W_left.dtype, device=V.device)
    for iteration in range(iterations):
        if iteration % TOLERANCE_EVERY:
            ratio = torch.div(V, torch.mm(W_left, H.to(W_left.dtype), out=product), out=product)
        else:
            model = torch.mm(W, H)
            kl = constant - torch.log(model).mul_(V).sum(0, dtype=torch.float64) + w_sum @ H.double()
            converged = previous - kl < tolerance * kl.abs()
            if bool(converged.any()):
                fitted[:, active[converged]] = H[:, converged]
                keep = ~converged
                if not bool(keep.any()):
                    return fitted
                active, V, H, model = active[keep], V[:, keep], H[:, keep], model[:, keep]
                constant, kl = constant[keep], kl[keep]
                product = torch.empty(V.shape, dtype=W_left.dtype, device=V.device)
            previous = kl
            ratio = torch.div(V, model, out=model).to(W_left.dtype)
        _apply_update(H, torch.mm(W_right, ratio), denominator)
    fitted[:, active] = H
    return fitted


def nmf_probability_stream(
    W_v: torch.Tensor,
    W_nv: torch.Tensor,
    window_frames: int,
    iterations: int,
    seed: int,
    mean: float,
    chunk_windows: int = DEFAULT_CHUNK_WINDOWS,
    tolerance: float = 0.0,
    precision: Precision = "float32",
) -> WindowAverage:
    """The NMF's soft vocal mask over a stream of unit-scale mixture-magnitude frames (n_bins, k):
    a `karaoke.inference.WindowAverage` whose prediction for each hop-1 window is
    S_v = W_v H_v / (W_v H_v + W_nv H_nv), H fitted for W = [W_v W_nv] (`fit_activations`, with its
    `tolerance` and `precision`), seeded by the window's number. `mean` is the song's mean over its
    windows (`karaoke.masks.window_mean`), which sets H's initial scale, so it is needed before the
    first frame. Windows are fitted `chunk_windows` at a time on W's device (two
    (n_bins * T, chunk_windows) float32 buffers); the result does not depend on it."""
    from karaoke.inference import WindowAverage

    device, n_components = W_v.device, W_v.shape[1]
    W = torch.cat([W_v, W_nv], dim=1).float().clamp_min(EPS)
    W_v, W_nv = W[:, :n_components], W[:, n_components:]

    def predict(windows: torch.Tensor, first: int) -> torch.Tensor:
        b, n_bins, T = windows.shape
        if n_bins * T != W.shape[0]:
            raise ValueError(f"bases {tuple(W_v.shape)} / {tuple(W_nv.shape)} do not fit {n_bins} bins x {T} frames")
        V = windows.reshape(b, -1).T.contiguous()  # bin-major columns (n_bins * T, b)
        keys = np.arange(first, first + b, dtype=np.uint64)
        H = fit_activations(V, W, iterations, seed, keys, max(mean, EPS), tolerance, precision)
        vocal = W_v @ H[:n_components]
        mask = vocal / (vocal + W_nv @ H[n_components:] + EPS)
        return mask.T.reshape(b, n_bins, T)

    return WindowAverage(predict, window_frames, chunk_windows, device)


def nmf_vocal_probability(
    mixture: np.ndarray,
    W_v: torch.Tensor,
    W_nv: torch.Tensor,
    window_frames: int,
    iterations: int,
    seed: int = 0,
    chunk_windows: int = DEFAULT_CHUNK_WINDOWS,
    tolerance: float = 0.0,
    precision: Precision = "float32",
) -> np.ndarray:
    """Soft vocal mask (n_bins, n_frames) of a whole unit-scale mixture magnitude (n_bins, n_frames):
    `nmf_probability_stream` given every frame at once; bin (f, t) takes the mean of the S_v of every
    window covering it (Eq. 1)."""
    from karaoke.masks import window_mean

    n_bins = mixture.shape[0]
    if W_v.shape != W_nv.shape or W_v.shape[0] != n_bins * window_frames:
        raise ValueError(
            f"bases {tuple(W_v.shape)} / {tuple(W_nv.shape)} do not fit {n_bins} bins x {window_frames} frames"
        )
    mixture = np.asarray(mixture, dtype=np.float32)
    mean = window_mean(mixture.sum(0, dtype=np.float64), n_bins, window_frames)
    stream = nmf_probability_stream(W_v, W_nv, window_frames, iterations, seed, mean, chunk_windows, tolerance, precision)
    return torch.cat([stream.push(torch.from_numpy(mixture)), stream.finish()], -1).cpu().numpy()


def save_bases(directory: str | Path, W: torch.Tensor, config: ExperimentConfig, **extra) -> Path:
    """Checkpoint (kind "nmf") of stacked bases W (2, D, K) = [W_v, W_nv]; `extra` goes on the card."""
    from karaoke.checkpoint import save_checkpoint

    tensors = {f"W_{source}": W[i] for i, source in enumerate(SOURCES)}
    return save_checkpoint(directory, tensors, config, KIND, **extra)


def load_bases(
    directory: str | Path, config: ExperimentConfig, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(W_v (D, K), W_nv (D, K), card) of an NMF checkpoint made with the same STFT and windows."""
    from karaoke.checkpoint import load_checkpoint

    tensors, _, card = load_checkpoint(directory, KIND, config, CHECKPOINT_SECTIONS[KIND], device=device)
    try:
        W_v, W_nv = (tensors[f"W_{source}"] for source in SOURCES)
    except KeyError as exc:
        raise CheckpointError(f"{directory}: NMF checkpoint lacks tensor {exc}") from None
    if W_v.shape != W_nv.shape or W_v.shape[0] != config.n_inputs:
        raise CheckpointError(
            f"{directory}: bases {tuple(W_v.shape)}/{tuple(W_nv.shape)} do not fit windows of {config.n_inputs} values"
        )
    return W_v, W_nv, card
