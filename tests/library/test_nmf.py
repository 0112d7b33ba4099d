"""The NMF baseline as a library: KL updates, shard-independent fits, fixed-W separation, checkpoints."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from karaoke.config import config_from_dict
from karaoke.errors import CheckpointError
from karaoke.models.nmf import (
    EPS,
    TOLERANCE_EVERY,
    column_uniform,
    fit_activations,
    fit_nmf,
    load_bases,
    nmf_vocal_probability,
    save_bases,
    unpack_windows,
    window_keys,
)
from tests.conftest import small_config_dict
from tests.reference import overlap_average


@pytest.fixture(scope="module")
def nmf_config(synth_root):
    # Windows every 10 frames give ~300 training columns from the 4 synthetic training songs.
    return config_from_dict(
        small_config_dict(str(synth_root), windows={"train_hop": 10}, nmf={"n_components": 8, "test_iterations": 30})
    )


@pytest.fixture(scope="module")
def training_matrix(nmf_config):
    """(2, D, N) vocal and accompaniment windows of the training songs, and their keys (N,)."""
    from karaoke.corpora import list_songs
    from karaoke.features import song_features, training_rows

    vocals, accompaniment, keys = [], [], []
    for song in list_songs(nmf_config.corpus, "train"):
        rows = training_rows(song_features(song.load(16000, "paper"), nmf_config), nmf_config)
        n = len(rows["start_frame"])
        vocals.append(rows["vocals"].reshape(n, -1))
        accompaniment.append(rows["accompaniment"].reshape(n, -1))
        keys.append(window_keys([song.song_id] * n, rows["start_frame"]))
    V = np.stack([np.concatenate(vocals).T, np.concatenate(accompaniment).T])
    return torch.from_numpy(np.ascontiguousarray(V)), np.concatenate(keys)


def test_column_init_depends_on_key_not_position():
    keys = window_keys(["a"] * 4 + ["b"] * 3, np.array([0, 60, 120, 180, 0, 60, 120]))
    assert len(set(keys.tolist())) == 7
    full = column_uniform(keys, 5, seed=3, stream=0)
    assert torch.equal(full[:, 2:], column_uniform(keys[2:], 5, seed=3, stream=0))
    assert torch.equal(full.flip(1), column_uniform(keys[::-1].copy(), 5, seed=3, stream=0))
    assert not torch.equal(full, column_uniform(keys, 5, seed=4, stream=0))
    assert not torch.equal(full, column_uniform(keys, 5, seed=3, stream=1))
    assert float(full.min()) >= 0.01 and float(full.max()) < 1.01


def test_kl_objective_never_increases(training_matrix):
    V, keys = training_matrix
    W, H, objectives = fit_nmf(V, keys, n_components=8, iterations=15, seed=0)
    kl = np.stack(objectives)
    assert kl.shape == (15, 2)
    assert np.all(np.diff(kl, axis=0) <= 1e-6 * kl[:-1])
    assert np.all(kl[-1] < 0.5 * kl[0])
    assert W.shape == (2, V.shape[1], 8) and H.shape == (2, 8, V.shape[2]) and (W >= 0).all()
    # Iteration i reports KL(V || W_i H_i): recompute it from the factors a 14-iteration fit returns.
    W_14, H_14, _ = fit_nmf(V, keys, n_components=8, iterations=14, seed=0)
    V64, model = V.double(), torch.bmm(W_14, H_14).double()
    direct = (torch.xlogy(V64, V64) - torch.xlogy(V64, model) - V64 + model).sum((1, 2)).numpy()
    np.testing.assert_allclose(kl[14], direct, rtol=1e-4)


def _threaded_fit(V: torch.Tensor, keys: np.ndarray, bounds: list[int], iterations: int):
    """Workers in threads, one column shard each, summing their statistics through a barrier."""
    n_workers = len(bounds) - 1
    barrier = threading.Barrier(n_workers)
    slots: list[torch.Tensor | None] = [None] * n_workers
    results: list = [None] * n_workers

    def worker(rank: int) -> None:
        def allreduce(tensor: torch.Tensor) -> None:
            slots[rank] = tensor.clone()
            barrier.wait()
            total = sum(slots)
            barrier.wait()
            tensor.copy_(total)

        shard = slice(bounds[rank], bounds[rank + 1])
        results[rank] = fit_nmf(V[:, :, shard].contiguous(), keys[shard], 8, iterations, seed=5, allreduce=allreduce)

    threads = [threading.Thread(target=worker, args=(rank,)) for rank in range(n_workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_sharded_fit_equals_single_process(training_matrix):
    V, keys = training_matrix
    W_single, H_single, kl_single = fit_nmf(V, keys, 8, 6, seed=5)
    n = V.shape[2]
    (W_a, H_a, kl_a), (W_b, H_b, kl_b) = _threaded_fit(V, keys, [0, n // 3, n], 6)
    assert torch.equal(W_a, W_b)
    assert float((W_a - W_single).norm() / W_single.norm()) < 1e-4
    assert float((torch.cat([H_a, H_b], 2) - H_single).norm() / H_single.norm()) < 1e-4
    np.testing.assert_allclose(np.stack(kl_a), np.stack(kl_single), rtol=1e-5)


def test_silent_input_stays_finite():
    V = torch.zeros(2, 60, 12)
    W, H, objectives = fit_nmf(V, np.arange(12, dtype=np.uint64), 3, 4)
    assert torch.isfinite(W).all() and torch.isfinite(H).all()
    assert np.all(np.isfinite(np.stack(objectives)))
    probability = nmf_vocal_probability(np.zeros((6, 30), np.float32), torch.rand(60, 3), torch.rand(60, 3), 10, 5)
    assert probability.shape == (6, 30) and np.isfinite(probability).all()


def test_soft_mask_is_overlap_average_and_chunk_independent():
    rng = np.random.default_rng(0)
    n_bins, T, n_frames = 5, 4, 23
    mixture = rng.random((n_bins, n_frames)).astype(np.float32)
    W_v = torch.from_numpy(rng.random((n_bins * T, 3)).astype(np.float32))
    W_nv = torch.from_numpy(rng.random((n_bins * T, 3)).astype(np.float32))
    whole = nmf_vocal_probability(mixture, W_v, W_nv, T, iterations=7, seed=2, chunk_windows=1000)
    chunked = nmf_vocal_probability(mixture, W_v, W_nv, T, iterations=7, seed=2, chunk_windows=6)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-7)
    # Reference: per-window masks from an explicit fit, averaged by masks.overlap_average (Eq. 1).
    V = torch.from_numpy(unpack_windows(mixture, T))
    H = fit_activations(V, torch.cat([W_v, W_nv], 1), 7, 2, np.arange(V.shape[1], dtype=np.uint64), float(V.mean()))
    vocal, accompaniment = W_v @ H[:3], W_nv @ H[3:]
    windows = (vocal / (vocal + accompaniment)).T.reshape(-1, n_bins, T).numpy()
    np.testing.assert_allclose(whole, overlap_average(windows), rtol=1e-5, atol=1e-7)
    assert whole.min() >= 0 and whole.max() <= 1


def _reference_activations(V: torch.Tensor, W: torch.Tensor, iterations: int, seed: int) -> torch.Tensor:
    """The test-time fit written out in float64: H <- max(H * W^T (V / WH) / (W^T 1 + EPS), EPS)."""
    V, W = V.double(), W.double()
    n_components = W.shape[1]
    keys = np.arange(V.shape[1], dtype=np.uint64)
    H = column_uniform(keys, n_components, seed, stream=0).double()
    H *= 2 * float(V.mean()) / (n_components * float(W.mean()))
    for _ in range(iterations):
        H = (H * (W.T @ (V / (W @ H))) / (W.sum(0, keepdim=True).T + EPS)).clamp_min(EPS)
    return H


@pytest.fixture()
def small_problem():
    generator = torch.Generator().manual_seed(1)
    V = torch.rand(60, 25, generator=generator) ** 3
    V[:, 3] = 0  # a silent window
    W = torch.rand(60, 6, generator=generator) + 0.01
    return V, W, np.arange(25, dtype=np.uint64)


@pytest.mark.parametrize("iterations", [1, 40])
def test_activations_equal_reference_updates(small_problem, iterations):
    V, W, keys = small_problem
    H = fit_activations(V, W, iterations, seed=4, keys=keys, mean=float(V.mean()))
    expected = _reference_activations(V, W, iterations, seed=4)
    assert H.dtype == torch.float32 and H.shape == (6, 25)
    np.testing.assert_allclose(H.double().numpy(), expected.numpy(), rtol=1e-4, atol=1e-6 * float(expected.max()))


def test_tolerance_stops_columns_at_a_check(small_problem):
    V, W, keys = small_problem
    mean = float(V.mean())
    # An unreachable decrease: every column stops at the first check after the start.
    stopped = fit_activations(V, W, 40, 4, keys, mean, tolerance=1e9)
    first_check = _reference_activations(V, W, TOLERANCE_EVERY, seed=4)
    np.testing.assert_allclose(stopped.double().numpy(), first_check.numpy(), rtol=1e-4, atol=1e-8)
    # A tolerance no decrease falls below: the same H as without one.
    full = fit_activations(V, W, 40, 4, keys, mean)
    np.testing.assert_allclose(fit_activations(V, W, 40, 4, keys, mean, tolerance=1e-300).numpy(), full.numpy(), rtol=1e-6)
    # In between, each column is its own problem: fitting a subset gives the same columns.
    some = fit_activations(V, W, 40, 4, keys, mean, tolerance=1e-3)
    subset = fit_activations(V[:, 10:], W, 40, 4, keys[10:], mean, tolerance=1e-3)
    np.testing.assert_allclose(subset.numpy(), some[:, 10:].numpy(), rtol=1e-5)


def test_bfloat16_products_stay_close(small_problem):
    V, W, keys = small_problem
    mean = float(V.mean())
    full = fit_activations(V, W, 40, 4, keys, mean)
    low = fit_activations(V, W, 40, 4, keys, mean, precision="bfloat16")
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    model, low_model = W @ full, W @ low
    assert float(((low_model - model).abs() / model).max()) < 0.05


def test_learned_bases_beat_the_mixture(training_matrix, nmf_config):
    from karaoke.corpora import list_songs
    from karaoke.estimators import NmfEstimator, separate_song
    from karaoke.metrics import bss_eval_mir_eval

    V, keys = training_matrix
    W, _, _ = fit_nmf(V, keys, 8, 30, seed=0)
    song = list_songs(nmf_config.corpus, "test")[0].load(16000, "paper")
    estimator = NmfEstimator(W[0], W[1], nmf_config.windows.n_frames, nmf_config.nmf.test_iterations, nmf_config.nmf.seed)
    vocals, accompaniment = separate_song(estimator, song, nmf_config)
    references = np.stack([song.vocals, song.accompaniment])
    separated = bss_eval_mir_eval(references, np.stack([vocals, accompaniment]))
    unprocessed = bss_eval_mir_eval(references, np.stack([song.mixture, song.mixture]))
    assert np.all(separated.sdr > unprocessed.sdr + 1.0), (separated.sdr, unprocessed.sdr)


def test_bases_checkpoint_round_trip_and_refusals(tmp_path, nmf_config):
    W = torch.rand(2, nmf_config.n_inputs, 4)
    save_bases(tmp_path / "bases", W, nmf_config, iteration=7)
    W_v, W_nv, card = load_bases(tmp_path / "bases", nmf_config)
    assert torch.equal(W_v, W[0]) and torch.equal(W_nv, W[1]) and card["iteration"] == 7
    other = config_from_dict(small_config_dict("x", stft={"n_fft": 256, "hop_length": 64}))
    with pytest.raises(CheckpointError, match="another config"):
        load_bases(tmp_path / "bases", other)
    save_bases(tmp_path / "short", W[:, :-1], nmf_config)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_bases(tmp_path / "short", nmf_config)
