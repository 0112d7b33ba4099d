"""The one place where the pipelines meet Ray: connecting, the workers' environment, storage for
Ray Train and Tune (a folder or s3://), the prepared windows as a Ray Dataset, and trainer
construction. Every job module builds on these instead of calling `ray.init` or `TorchTrainer` itself.

Credentials and endpoint for s3:// come from the environment (AWS_*); the driver forwards them to
its tasks and workers, which matters when the cluster was started before they were set.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import ray.data
    from ray.train.torch import TorchTrainer

    from karaoke.config import WorkerConfig


def connect(include_dashboard: bool | None = None) -> None:
    """Join the running Ray cluster (`RAY_ADDRESS`, or one started on this machine) or start a
    local one; Ray Data's progress bars only on a terminal (they flood job logs and CI)."""
    import ray

    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if not ray.is_initialized():
        ray.init(include_dashboard=include_dashboard)


def worker_env() -> dict[str, str]:
    """The driver's AWS_* settings, for tasks and workers started before they were set."""
    return {key: value for key, value in os.environ.items() if key.startswith("AWS_")}


def task_options(num_cpus: float) -> dict[str, Any]:
    """`ray.remote` options of a pipeline task: its CPUs and the workers' environment."""
    env = worker_env()
    return {"num_cpus": num_cpus, "runtime_env": {"env_vars": env} if env else None}


def s3_filesystem():
    """A pyarrow S3 filesystem with the driver's AWS_* settings spelled out, so that it travels to
    read tasks in workers started before those variables were set; unset ones keep AWS's defaults."""
    import pyarrow.fs

    env = os.environ
    options = {
        "endpoint_override": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
        "access_key": env.get("AWS_ACCESS_KEY_ID"),
        "secret_key": env.get("AWS_SECRET_ACCESS_KEY"),
        "session_token": env.get("AWS_SESSION_TOKEN"),
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
    }
    return pyarrow.fs.S3FileSystem(**{key: value for key, value in options.items() if value})


def train_storage(location: str) -> dict[str, Any]:
    """`RunConfig` arguments (Train's or Tune's) for storage at a folder or s3:// URL. For s3:// the
    filesystem is given explicitly (see `s3_filesystem`): Train's controller actor may run in a
    process started before the driver's AWS_* settings, and would otherwise resolve the URL without them."""
    from karaoke.storage import is_url

    if not is_url(location):
        return {"storage_path": str(location)}
    return {"storage_path": str(location).split("://", 1)[1], "storage_filesystem": s3_filesystem()}


def read_windows_dataset(dataset: str, split: str) -> "ray.data.Dataset":
    """A split's training windows as a `ray.data.Dataset` whose tensor columns have shape (n_bins, T).

    Reads only the shards listed in the manifest, so files of an unfinished rerun are never seen.
    """
    import ray

    from karaoke.dataset import DatasetError, split_files
    from karaoke.storage import is_url

    files = split_files(dataset, split)
    if not files:
        raise DatasetError(f"{dataset}: split {split!r} has no training windows (see manifest.json)")
    filesystem = None
    if is_url(dataset):
        filesystem = s3_filesystem()
        files = [f.split("://", 1)[1] for f in files]
    return ray.data.read_parquet(files, filesystem=filesystem)


def make_trainer(
    loop: Callable[[dict], None],
    loop_config: dict[str, Any],
    workers: "WorkerConfig",
    run_dir: str,
    datasets: dict[str, Any],
    dataset_config: Any = None,
    num_to_keep: int | None = None,
    callbacks: list | None = None,
) -> "TorchTrainer":
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
            worker_runtime_env={"env_vars": worker_env()},
        ),
        datasets=datasets,
        **({"dataset_config": dataset_config} if dataset_config is not None else {}),
    )


def unwrap_error(exc: BaseException, error: type[Exception]) -> Exception | None:
    """A library error (`error`, e.g. `TrainingError`) raised in a Ray task or worker reaches the
    driver wrapped in Ray's error with its traceback; rebuilt from its one line, or None."""
    found = re.search(rf"{error.__name__}: (.+)", str(exc))
    return error(found.group(1).strip()) if found else None
