"""Ray Train job: the NMF baseline's bases learned as distributed KL-NMF.

    karaoke train nmf --config configs/demo.yaml --data DATASET --out RUN_DIR [--resume]

Each worker holds a shard of the training windows (columns: those whose key is its rank modulo the
number of workers) and its own activations H; every iteration the workers allreduce the W update's
numerator and denominator (gloo on CPU, NCCL on GPU), so all hold the same W and the fit equals
single-process NMF (`karaoke.models.nmf.fit_nmf`). Every `nmf.checkpoint_every` iterations rank 0
reports a checkpoint of W, the iteration and the objective so far (the last
`resources.nmf.keep_checkpoints` are kept; the driver prints a line and writes TensorBoard events
for each, `pipelines.follow`); a failed worker group is restarted from the latest checkpoint
(`resources.nmf.max_failures`), and `--resume` continues a stopped run.

RUN_DIR gets `config.yaml`, `bases/` (the final W, a `karaoke.checkpoint` folder of kind "nmf"),
`objective.json` (KL divergence and seconds per iteration) and `ray/` (Ray Train's run storage).
Each rank also checkpoints its H (`activations_rank<r>.safetensors`), so a resumed fit continues
exactly where it stopped; only with another number of workers does H start again from its seed.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_NAME = "nmf"
COLUMNS = ["song_id", "start_frame", "remix", "vocals", "accompaniment"]


def _load_shard(rows, n_inputs: int, rank: int, world_size: int, device, nmf) -> tuple[Any, Any]:
    """This worker's windows (those whose key is rank modulo world_size; with `nmf.train_hop` > 0 only
    those starting at a multiple of it; without `nmf.train_remixes` only the songs' own) as V
    (2, D, N) float32 on `device`, and their column keys (N,).

    Every worker reads all rows and keeps its own: Ray Train's `streaming_split` makes equal shards by
    dropping rows, and then the fit would not be the fit of all windows.
    """
    import numpy as np
    import torch

    from karaoke.models.nmf import window_keys

    vocals, accompaniment, keys = [], [], []
    for batch in rows.iter_batches(batch_size=256, batch_format="numpy"):
        batch_keys = window_keys([str(s) for s in batch["song_id"]], batch["start_frame"])
        mine = batch_keys % np.uint64(world_size) == rank
        if nmf.train_hop:
            mine &= batch["start_frame"] % nmf.train_hop == 0
        if not nmf.train_remixes:
            mine &= batch["remix"] == 0
        n = int(mine.sum())
        vocals.append(batch["vocals"][mine].reshape(n, n_inputs))
        accompaniment.append(batch["accompaniment"][mine].reshape(n, n_inputs))
        keys.append(batch_keys[mine])
    if not keys:
        return torch.zeros(2, n_inputs, 0, device=device), np.zeros(0, dtype=np.uint64)
    V = torch.stack([torch.from_numpy(np.concatenate(part)).to(device).float().T for part in (vocals, accompaniment)])
    return V.contiguous(), np.concatenate(keys)


def _activations_file(rank: int) -> str:
    return f"activations_rank{rank}.safetensors"


def save_activations(folder: str | Path, rank: int, H: Any, keys: Any) -> None:
    """This rank's H (S, K, N) and its columns' keys (N,), beside the checkpoint's bases."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    keys64 = torch.from_numpy(np.asarray(keys, dtype=np.uint64).view(np.int64).copy())
    save_file({"H": H.detach().cpu().contiguous(), "keys": keys64}, str(Path(folder) / _activations_file(rank)))


def load_activations(folder: str | Path, rank: int, keys: Any) -> tuple[Any, str | None]:
    """(H, None) of this rank's columns as checkpointed, in the order of `keys`; (None, why) when
    the checkpoint has none that fit (another number of workers, other windows, a damaged file):
    H then starts again from its seed and the fit is no longer exactly the uninterrupted one."""
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / _activations_file(rank)
    if not path.is_file():
        return None, f"no {path.name}"
    try:
        tensors = load_file(str(path))
        H, stored = tensors["H"], tensors["keys"].numpy().view(np.uint64)
    except (SafetensorError, OSError, KeyError) as exc:
        return None, f"unreadable {path.name} ({exc})"
    keys = np.asarray(keys, dtype=np.uint64)
    if np.array_equal(stored, keys):
        return H, None
    # The same windows read in another order: match columns by key (keys must then be unique).
    if len(stored) == len(keys) and len(np.unique(keys)) == len(keys) and np.array_equal(np.sort(stored), np.sort(keys)):
        order = np.argsort(stored)[np.argsort(np.argsort(keys))]
        return H[:, :, order], None
    return None, f"{path.name} holds other windows"


def train_loop(loop_config: dict[str, Any]) -> None:
    """Per worker: load the column shard, restore W from the latest checkpoint, fit, report and checkpoint."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from karaoke.config import config_from_dict
    from karaoke.errors import CheckpointError
    from karaoke.models.nmf import fit_nmf, load_bases, save_bases

    config = config_from_dict(loop_config["config"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    V, keys = _load_shard(ray.train.get_dataset_shard("train"), config.n_inputs, rank, world_size, device, config.nmf)

    W, H, start, history = None, None, 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            W_v, W_nv, card = load_bases(folder, config)
            H, problem = load_activations(folder, rank, keys)
        if problem is not None:
            print(f"rank {rank}: H starts again from its seed ({problem})")
        if W_v.shape[1] != config.nmf.n_components:
            raise CheckpointError(
                f"{checkpoint.path}: has {W_v.shape[1]} bases per source but nmf.n_components is "
                f"{config.nmf.n_components}; resume with the run's config or start a new --out"
            )
        W, start, history = torch.stack([W_v, W_nv]), card["iteration"], card["objective"]
    last = config.nmf.train_iterations

    def publish(W: torch.Tensor, H: torch.Tensor) -> None:
        # Every rank puts its H into the checkpoint folder; rank 0 adds the bases and the card.
        metrics = {key: history[-1][key] for key in ("iteration", "kl_vocals", "kl_accompaniment")}
        with tempfile.TemporaryDirectory() as folder:
            save_activations(folder, rank, H, keys)
            if rank == 0:
                save_bases(folder, W, config, iteration=metrics["iteration"], objective=history)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=f"iteration_{metrics['iteration']:05d}",
            )

    clock = [time.perf_counter()]

    def on_iteration(iteration: int, W: torch.Tensor, H: torch.Tensor, kl) -> None:
        now = time.perf_counter()
        row = {"iteration": iteration + 1, "kl_vocals": float(kl[0]), "kl_accompaniment": float(kl[1])}
        history.append({**row, "seconds": now - clock[0]})
        clock[0] = now
        # Train V2 takes one report per health-check poll (2 s), so ranks report only with a
        # checkpoint; the card holds the objective of every iteration.
        if (iteration + 1) % config.nmf.checkpoint_every == 0 or iteration + 1 == last:
            publish(W, H)

    allreduce = dist.all_reduce if world_size > 1 else None
    W, H, _ = fit_nmf(V, keys, config.nmf.n_components, last, config.nmf.seed, W, start, allreduce, on_iteration, H)
    if start >= last:
        # Resumed after the last iteration: the restored bases are this run's result.
        publish(W, H)


def fit_bases(config, train_ds, run_dir: str | Path, resume: bool = False) -> str:
    """Fit the bases on a Ray Dataset of training windows into `run_dir` (a folder or an s3:// URL);
    returns `run_dir/bases`.

    `train_ds` has `song_id`, `start_frame`, `vocals` and `accompaniment` (n_bins, T) columns (as
    `pipelines.ray_runtime.read_windows_dataset` gives). Needs a connected Ray.
    """
    import ray.data
    import ray.train

    from karaoke.checkpoint import load_checkpoint
    from karaoke.config import CHECKPOINT_SECTIONS, config_to_dict, save_config
    from karaoke.errors import KaraokeError
    from karaoke.storage import exists, is_url, join, upload_folder, write_json
    from pipelines.follow import follow_training, nmf_line, nmf_steps
    from pipelines.ray_runtime import make_trainer

    run_dir = str(run_dir) if is_url(run_dir) else str(Path(run_dir).resolve())
    storage = join(run_dir, "ray")
    started = exists(join(storage, RUN_NAME))
    if started and not resume:
        raise KaraokeError(f"{run_dir}: holds an NMF run already; pass --resume to continue it or choose another --out")
    if resume and not started:
        raise KaraokeError(f"{run_dir}: no NMF run to resume (nothing under {join(storage, RUN_NAME)})")
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    save_config(config, join(run_dir, "config.yaml"))
    # Same name and storage: Train restores the run's latest checkpoint when it is started again.
    trainer = make_trainer(
        train_loop,
        {"config": config_to_dict(config)},
        config.resources.nmf,
        join(storage, RUN_NAME),
        {"train": train_ds.select_columns(COLUMNS)},
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
        num_to_keep=config.resources.nmf.keep_checkpoints,
    )
    with follow_training(join(storage, RUN_NAME), nmf_steps, nmf_line, config.nmf.train_iterations):
        result = trainer.fit()
    if result.checkpoint is None:
        raise KaraokeError(f"{join(storage, RUN_NAME)}: training finished without a checkpoint")
    # Copy and verify locally, then publish: a `bases/` folder is always a whole checkpoint (its card,
    # written last, carries the digest of the tensors).
    with tempfile.TemporaryDirectory(prefix="karaoke-bases-") as staging:
        result.checkpoint.to_directory(staging)
        _, _, card = load_checkpoint(staging, "nmf", config, CHECKPOINT_SECTIONS["nmf"])
        bases = join(run_dir, "bases")
        if is_url(run_dir):
            upload_folder(staging, bases, last="checkpoint.json")
        else:
            partial = Path(run_dir) / ".bases.partial"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(staging, partial)
            shutil.rmtree(bases, ignore_errors=True)
            partial.rename(bases)
    write_json(join(run_dir, "objective.json"), card["objective"])
    return bases


def train_nmf(config, dataset: str, run_dir: str, resume: bool = False) -> str:
    """The command: read the dataset's train windows and fit; returns the bases folder."""
    from pipelines.ray_runtime import connect, read_windows_dataset

    connect()
    start = time.perf_counter()
    bases = fit_bases(config, read_windows_dataset(dataset, "train"), run_dir, resume=resume)
    log.info("NMF bases in %s (%.1f s)", bases, time.perf_counter() - start)
    return bases
