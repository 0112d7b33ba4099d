"""Ray Train job: the paper's mask DNN trained data-parallel on a prepared dataset.

    karaoke train dnn --config configs/demo.yaml --data DATASET --out RUN_DIR [--resume]

A `TorchTrainer` runs `train_loop_per_worker` on `resources.dnn.num_workers` workers (DDP; gloo on CPU,
NCCL and bfloat16 autocast on GPU). Each worker reads its shard of the train windows with Ray Data
(`get_dataset_shard("train")`, per-worker batch = global batch // world size) and of the valid
windows for the per-epoch metrics (loss and mask accuracy, summed over workers with all_reduce).
Rank 0 writes a checkpoint every epoch to RUN_DIR/epoch_NNNN (local or s3://): weights, optimizer
state, the resolved config, the epoch and the metrics; it keeps the last `resources.dnn.keep_checkpoints`
and the best by validation loss. The driver prints one line per epoch and writes TensorBoard
events to RUN_DIR/tensorboard/ (`pipelines.follow`). A lost worker restarts the group from the last
checkpoint (`FailureConfig`); `--resume` continues a finished or killed run from its last epoch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ray.data

    from karaoke.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    checkpoint_path: str | None
    metrics: dict[str, Any]


def _reduce(stats, device) -> tuple[float, float, int]:
    """Window-weighted (loss, accuracy, windows) summed over all workers."""
    import torch
    import torch.distributed as dist

    totals = torch.tensor(
        [stats.loss * stats.n_windows, stats.accuracy, float(stats.n_windows)], dtype=torch.float64, device=device
    )
    # accuracy is a mean over this worker's bins; weight it by windows (every window has the same bins)
    totals[1] *= stats.n_windows
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    n = int(totals[2].item())
    return (totals[0] / max(n, 1)).item(), (totals[1] / max(n, 1)).item(), n


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker; takes only serialisable config (the resolved experiment config as a dict)."""
    import tempfile
    import time

    import ray.train
    import ray.train.torch
    import torch

    from karaoke.checkpoint import (
        checkpoint_problem,
        epoch_folder,
        prune_checkpoints,
        retained_epochs,
    )
    from karaoke.config import config_from_dict
    from karaoke.models.dnn import (
        build_model,
        evaluate,
        make_loss,
        make_optimizer,
        restore_training,
        save_dnn,
        schedule_learning_rate,
        train_epoch,
    )

    config = config_from_dict(loop_config["config"])
    context = ray.train.get_context()
    world, rank = context.get_world_size(), context.get_world_rank()
    # Ray gives a fractional-CPU worker one thread; share the node's cores between its workers instead.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // context.get_local_world_size()))
    torch.manual_seed(config.train.seed)
    device = ray.train.torch.get_device()

    model = ray.train.torch.prepare_model(build_model(config))
    optimizer = make_optimizer(model, config.train)
    loss_fn = make_loss(config.train)

    # Step 1. Resume: a restart inside this run (lost worker) wins over the checkpoint given by
    # --resume, unless it does not verify (weights copied in part): then the driver's, which does.
    candidates = [ray.train.get_checkpoint()]
    if loop_config.get("resume_from"):
        candidates.append(ray.train.Checkpoint(loop_config["resume_from"]))
    first_epoch, history = 1, []
    for checkpoint in filter(None, candidates):
        with checkpoint.as_directory() as directory:
            problem = checkpoint_problem(directory)
            if problem is None:
                card = restore_training(directory, model, optimizer, config)
                first_epoch, history = card["epoch"] + 1, card.get("history", [])
                break
        if rank == 0:
            print(f"skipping checkpoint {checkpoint.path}: {problem}")

    # Step 2. Epochs over this worker's shards.
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid") if loop_config["has_valid"] else None
    batch_size = max(1, config.train.batch_size // world)
    for epoch in range(first_epoch, config.train.epochs + 1):
        start = time.perf_counter()
        learning_rate = schedule_learning_rate(optimizer, config.train, epoch)
        batches = train_shard.iter_torch_batches(
            batch_size=batch_size, local_shuffle_buffer_size=4 * batch_size, local_shuffle_seed=config.train.seed + epoch
        )
        train_stats = train_epoch(model, batches, optimizer, loss_fn, device)
        seconds = time.perf_counter() - start
        loss, accuracy, windows = _reduce(train_stats, device)
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss,
            "train_accuracy": accuracy,
            "learning_rate": learning_rate,
            "windows_per_second": windows / seconds,
            "epoch_seconds": seconds,
        }
        if valid_shard is not None:
            valid_stats = evaluate(model, valid_shard.iter_torch_batches(batch_size=batch_size), loss_fn, device)
            metrics["valid_loss"], metrics["valid_accuracy"], _ = _reduce(valid_stats, device)
        history.append(metrics)

        # Step 3. Every rank reports; rank 0 alone attaches the checkpoint, then deletes those the
        # run no longer keeps (once the new one is stored: a kill in between loses nothing).
        if rank == 0:
            with tempfile.TemporaryDirectory() as directory:
                save_dnn(directory, model, config, epoch, metrics, optimizer, history=history)
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(directory),
                    checkpoint_dir_name=epoch_folder(epoch),
                )
            if loop_config.get("run_dir"):  # a Tune trial's checkpoints are Tune's to keep (num_to_keep)
                prune_checkpoints(loop_config["run_dir"], retained_epochs(history, config.resources.dnn.keep_checkpoints))
        else:
            ray.train.report(metrics)


def shuffled_train_windows(dataset: str, train_cfg: TrainConfig) -> ray.data.Dataset:
    """The train split's windows (the columns `train_cfg`'s loss needs) in one random order across
    songs (seeded by `train.seed`), materialised.

    The shards hold each song's windows together, and the per-epoch local shuffle buffer (4 batches)
    only reorders neighbours: without this shuffle every batch came from one or two songs and Adam
    chased the latest song (configs/demo.yaml: test vocal SDR at alpha 0.5 fell from +3.9 dB to -8 dB). Shuffled
    once, then materialised (float16, spilled to disk by Ray when large): every epoch streams from
    the object store instead of re-reading the Parquet shards, in an order the local buffer varies.
    """
    from karaoke.models.dnn import training_columns
    from pipelines.ray_runtime import read_windows_dataset

    columns = training_columns(train_cfg)
    return read_windows_dataset(dataset, "train").select_columns(columns).random_shuffle(seed=train_cfg.seed).materialize()


def train_dnn(config, dataset: str, run_dir: str, resume: bool = False) -> TrainResult:
    """Train on `dataset` into `run_dir`; returns the last checkpoint's path and metrics.

    Connects to the running Ray cluster (or starts a local one). Raises `TrainingError` when the loss
    diverges, and `CheckpointError` when `run_dir` holds checkpoints but `resume` is not set (or holds
    none but it is), or when they come from another stft/windows/dnn config.
    """
    import ray

    from karaoke.checkpoint import latest_checkpoint
    from karaoke.config import config_to_dict, save_config
    from karaoke.dataset import DatasetError, check_dataset_fits
    from karaoke.errors import CheckpointError
    from karaoke.models.dnn import TrainingError, training_columns
    from karaoke.storage import is_url, join
    from pipelines.follow import dnn_steps, epoch_line, follow_training
    from pipelines.ray_runtime import (
        connect,
        forget_train_record,
        make_trainer,
        read_windows_dataset,
        unwrap_error,
    )

    check_dataset_fits(config, dataset)
    if not is_url(run_dir):
        run_dir = os.path.abspath(run_dir)
    last = latest_checkpoint(run_dir)
    if last and not resume:
        raise CheckpointError(f"{run_dir}: already holds checkpoints (last {last}); pass --resume or choose another --out")
    if resume and not last:
        raise CheckpointError(f"{run_dir}: --resume given but there is no checkpoint to resume from")
    connect()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Blocks in a fixed order: a rerun (and a resume) sees the windows in the order the first run
    # did, instead of in the order read tasks happened to finish.
    context.execution_options.preserve_order = True
    save_config(config, join(run_dir, "config.yaml"))

    forget_train_record(run_dir)
    datasets = {"train": shuffled_train_windows(dataset, config.train)}
    try:
        datasets["valid"] = read_windows_dataset(dataset, "valid").select_columns(training_columns(config.train)).materialize()
    except DatasetError:
        log.warning("%s has no validation windows; reporting training metrics only", dataset)
    trainer = make_trainer(
        train_loop_per_worker,
        {"config": config_to_dict(config), "resume_from": last, "has_valid": "valid" in datasets, "run_dir": run_dir},
        config.resources.dnn,
        run_dir,
        datasets,
    )
    try:
        # The epochs done are those of the checkpoint resumed from, not of a newer card whose weights
        # never arrived (that epoch is trained again).
        done = int(last.rstrip("/").rsplit("_", 1)[1]) if last else 0
        with follow_training(run_dir, dnn_steps, epoch_line, config.train.epochs, done):
            result = trainer.fit()
    except Exception as exc:  # a worker's TrainingError arrives wrapped in Ray's error with its traceback
        error = unwrap_error(exc, TrainingError)
        if error is not None:
            raise error from None
        raise
    return TrainResult(result.checkpoint.path if result.checkpoint else None, dict(result.metrics or {}))
