"""The one place where the pipelines meet Ray: connecting, storage for Ray Train and Tune (a folder
or s3://), the prepared windows as a Ray Dataset, trainer construction and the errors of workers.
Every job module builds on these instead of calling `ray.init` or `TorchTrainer` itself.

Credentials and endpoint for s3:// never pass through Ray: no task spec, runtime environment or
pickled filesystem carries them, so neither the dashboard nor Ray's logs can show them. Every
process reads them from its own environment: a local cluster started by the driver inherits the
driver's AWS_* settings, and a cluster's nodes use their instance profiles (see cluster.yaml). A
cluster started by hand must be started with those settings in its environment.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ray.data
    from ray.train.torch import TorchTrainer

    from karaoke.config import WorkerConfig


_VERBOSE = [False]


def set_verbose(verbose: bool) -> None:
    """`--verbose`: Ray's own INFO lines and the workers' output reach the console. Without it they
    stay in Ray's session logs, and a command shows only its own progress lines."""
    _VERBOSE[0] = verbose


def connect(include_dashboard: bool | None = None) -> None:
    """Join the running Ray cluster (`RAY_ADDRESS`, or one started on this machine) or start a
    local one; Ray Data's progress bars only on a terminal (they flood job logs and CI)."""
    import logging

    import ray

    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    verbose = _VERBOSE[0]
    level = logging.INFO if verbose else logging.WARNING
    if not ray.is_initialized():
        # The dashboard (and its job and state APIs) on loopback only; Ray's gRPC servers bind all
        # interfaces whatever the settings (docs/faults.md, "Ports").
        ray.init(
            include_dashboard=include_dashboard, log_to_driver=verbose, logging_level=level, dashboard_host="127.0.0.1"
        )
    # Ray Data sets its loggers' levels when first imported: import it, then set them.
    import ray.data  # noqa: F401

    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(level)
    # Ray Data prints its errors too, e.g. a task it gives up on while the job goes on (the command
    # reports that song in one line); they stay in its session log file.
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.INFO if verbose else logging.CRITICAL)


def train_storage(location: str) -> dict[str, Any]:
    """`RunConfig` arguments (Train's or Tune's) for storage at a folder or s3:// URL; Train resolves
    the URL in each process from that process's environment."""
    return {"storage_path": str(location)}


def read_windows_dataset(dataset: str, split: str) -> ray.data.Dataset:
    """A split's training windows as a `ray.data.Dataset` whose tensor columns have shape (n_bins, T).

    Reads only the shards listed in the manifest, so files of an unfinished rerun are never seen.
    """
    import ray

    from karaoke.dataset import DatasetError, split_files

    files = split_files(dataset, split)
    if not files:
        raise DatasetError(f"{dataset}: split {split!r} has no training windows (see manifest.json)")
    return ray.data.read_parquet(files)


def make_trainer(
    loop: Callable[[dict], None],
    loop_config: dict[str, Any],
    workers: WorkerConfig,
    run_dir: str,
    datasets: dict[str, Any],
    dataset_config: Any = None,
    num_to_keep: int | None = None,
    callbacks: list | None = None,
) -> TorchTrainer:
    """A `TorchTrainer` running `loop` on `workers` (resources, restarts) with its run storage at
    `run_dir` (a folder or URL whose last part names the run: Train restores the run's latest
    checkpoint when the same run is started again)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    storage, name = str(run_dir).rstrip("/").rsplit("/", 1)
    resources = {"CPU": workers.cpus_per_worker, **({"GPU": 1} if workers.use_gpu else {})}
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers.num_workers, use_gpu=workers.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            **train_storage(storage),
            failure_config=ray.train.FailureConfig(max_failures=workers.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=num_to_keep),
            callbacks=callbacks,
        ),
        datasets=datasets,
        **({"dataset_config": dataset_config} if dataset_config is not None else {}),
    )


# Ray Train's record of the checkpoints a run reported, kept in the run's storage folder.
TRAIN_RECORD = "checkpoint_manager_snapshot.json"


def forget_train_record(run_dir: str) -> None:
    """Delete Train's record of an earlier fit in `run_dir`. A run that prunes its own checkpoints
    (`karaoke.checkpoint.prune_checkpoints`) leaves a record naming folders that are gone, and Train
    refuses to start over it; such a run resumes from its newest verified checkpoint instead."""
    from karaoke.storage import join, open_fs

    fs, path = open_fs(join(run_dir, TRAIN_RECORD))
    if fs.exists(path):
        fs.rm(path)


def unwrap_error(exc: BaseException, error: type[Exception]) -> Exception | None:
    """A library error (`error`, e.g. `TrainingError`) raised in a Ray task or worker reaches the
    driver wrapped in Ray's error with its traceback; rebuilt from its one line, or None."""
    found = re.search(rf"{error.__name__}: (.+)", str(exc))
    return error(found.group(1).strip()) if found else None
