"""Ray Tune job: a hyper-parameter search over the mask DNN (or the NMF baseline) in which every
trial is scored on the validation songs over the whole alpha grid.

    python -m pipelines.tune --config configs/demo.yaml --data DATASET --out RUN/tune [--set k=v]
    karaoke tune ...                          (the same command)

The config's `tune` section (`karaoke.config.TuneConfig`) gives the search space (dotted keys of the
model's sections -> choices), the number of trials, the scheduler and the criterion. Each trial is a
Tune function trainable that
1. trains in a `TorchTrainer` running the loop of `pipelines.train_dnn` (or `pipelines.train_nmf`),
   whose reports reach Tune through `TuneReportCallback`: ASHA stops a DNN trial whose per-epoch
   validation loss trails (NMF trials run to the end). Checkpoints go to OUT/trials/<trial id>/.
   Known bug (Ray 2.60, Train V2 inside Tune): when ASHA stops a trial, the placement group of
   its Train worker group stays reserved until the tune's driver exits. On a cluster with CPUs to
   spare this only wastes them; on a 2-CPU machine the next trial's workers then wait forever, so
   use `tune.scheduler: none` there until it is fixed.
2. computes each validation song's vocal probability once (one Ray task per song) and scores the
   alphas of `evaluation.alphas` in parallel Ray tasks, all inside the trial's placement group: the
   trial itself takes 0.01 CPU, its tasks `tune.scoring_tasks` bundles of `tune.scoring_cpus`
   (the Train workers get a placement group of their own).
3. reports the mean over songs of every score at every alpha (`vocals_sdr_a0.50`, `mean_sar_a0.30`,
   ...) and `criterion`: the mean `tune.criterion` at `evaluation.alpha` (higher is better).

OUT (a folder or an s3:// URL) gets
    ray/                 Tune's storage: per trial params.json, progress.csv, result.json and the
                         TensorBoard event files (`tensorboard --logdir OUT/ray`)
    trials/<trial id>/   the trial's last checkpoint (DNN epoch_NNNN/, NMF checkpoint_<time>/)
    results.parquet/.csv one row per scored trial and alpha: trial_id, the trial's values, alpha,
                         n_songs and the mean scores
    best/                written last: config.yaml (the experiment config with the winner's values
                         and no tune section), checkpoint/ (a verified copy of the winner's
                         checkpoint) and criterion.json (every trial's criterion and the winner),
                         written after the others; a folder is renamed into place, an s3 prefix
                         gets criterion.json last, so a half-finished tune never has best/criterion.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import posixpath
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from karaoke.config import ExperimentConfig

EXPERIMENT = "ray"
TRIALS = "trials"
BEST = "best"
MARKER = "criterion.json"
# ASHA's clock and metric: reported by DNN trials every epoch.
TIME_ATTR, SCHEDULER_METRIC = "epoch", "valid_loss"


@dataclass(frozen=True)
class TuneOutcome:
    """The winner: its config, OUT/best/checkpoint (folder or URL) and the results table's path."""

    best_config: ExperimentConfig
    best_checkpoint: str
    results: str


def summary_columns() -> tuple[str, ...]:
    """Score columns reported per alpha: `{source}_{metric}` and the two sources' mean `mean_{metric}`."""
    from karaoke.metrics import METRICS, SCORE_COLUMNS

    return (*SCORE_COLUMNS, *(f"mean_{metric}" for metric in METRICS))


def metric_name(column: str, alpha: float) -> str:
    """`vocals_sdr_a0.50`: the name of a column's mean over the songs at one alpha."""
    return f"{column}_a{alpha:.2f}" if round(alpha, 2) == alpha else f"{column}_a{alpha:g}"


def scored_alphas(config: ExperimentConfig) -> list[float]:
    """The alpha grid, plus `evaluation.alpha` (where the criterion is read) if the grid lacks it."""
    return sorted({*config.evaluation.alphas, config.evaluation.alpha})


def trial_config(config: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """`config` with a trial's dotted-key values (e.g. {"train.learning_rate": 0.03}) applied."""
    from karaoke.config import config_from_dict, config_to_dict

    data = config_to_dict(config)
    for key, value in params.items():
        section, name = key.split(".", 1)
        data[section][name] = value
    return config_from_dict(data, source=f"tune trial {params}")


def _probability(method: str, checkpoint: str, song, config: ExperimentConfig):
    from pipelines.evaluate import torch_threads, vocal_probability

    torch_threads(1)
    return vocal_probability(method, checkpoint, song, config)


def _score(song, mixture_stft, probability, alphas: list[float], config: ExperimentConfig) -> list[dict]:
    import numpy as np

    from karaoke.metrics import score_alpha_grid

    references = np.stack([song.vocals, song.accompaniment])
    # whole-song scores only (no sample rate): the framewise medians would double the work
    rows = score_alpha_grid(
        mixture_stft, probability, references, song.mixture, alphas, config.stft, None, config.evaluation.mask
    )
    return [{"song_id": song.song_id, **row} for row in rows]


def score_checkpoint(method: str, checkpoint: str, songs: list, config: ExperimentConfig) -> dict[str, float]:
    """Per-alpha means over `songs` (object refs of `MixedSong`s) of a checkpoint's separations.

    One task per song computes the (n_bins, n_frames) vocal probability; scoring tasks then take
    songs whole, or, with fewer songs than `tune.scoring_tasks`, slices of the alpha grid (each task
    redoes the song's reference-only BSS-EVAL work, so songs are split only to fill the bundles).
    Returns `n_songs`, `metric_name(column, alpha)` for every summary column and alpha, `criterion`.
    """
    import numpy as np
    import ray

    from karaoke.metrics import summarise
    from pipelines.prepare import forwarded_env

    tune_cfg = config.tune
    alphas = scored_alphas(config)
    slices = min(len(alphas), -(-tune_cfg.scoring_tasks // len(songs)))
    chunks = [[float(a) for a in chunk] for chunk in np.array_split(alphas, slices)]
    env = forwarded_env()  # s3:// checkpoints, on workers started without the driver's AWS_*
    options = {"num_cpus": tune_cfg.scoring_cpus, "runtime_env": {"env_vars": env} if env else None}
    probability = ray.remote(num_returns=2, **options)(_probability)
    score = ray.remote(**options)(_score)
    config_ref = ray.put(config)
    futures = []
    for song in songs:
        mixture_stft, vocal_probability = probability.remote(method, checkpoint, song, config_ref)
        futures += [score.remote(song, mixture_stft, vocal_probability, chunk, config_ref) for chunk in chunks]
    rows = [row for rows in ray.get(futures) for row in rows]
    metrics: dict[str, float] = {"n_songs": len(songs)}
    for entry in summarise(rows, by=("alpha",)):
        metrics.update({metric_name(c, entry["alpha"]): entry[c] for c in summary_columns()})
    metrics["criterion"] = metrics[metric_name(tune_cfg.criterion, config.evaluation.alpha)]
    return metrics


def _fit(config: ExperimentConfig, datasets: dict, run_dir: str) -> tuple[str, dict[str, Any]]:
    """Train the trial's model in a TorchTrainer whose reports reach Tune; returns (last checkpoint,
    the last report's metrics). The DNN runs `pipelines.train_dnn`'s loop (a report per epoch), the
    NMF `pipelines.train_nmf`'s (a report per checkpoint) on every training window in each worker.
    The datasets come materialised: a pending Ray Data operator would need a whole free CPU, which
    the trials' reservations may leave to nobody on a small machine.
    """
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from karaoke.config import config_to_dict
    from pipelines import train_dnn, train_nmf
    from pipelines.prepare import forwarded_env, train_storage

    if config.tune.model == "dnn":
        loop, loop_config = train_dnn.train_loop_per_worker, {"resume_from": None, "has_valid": True}
        data_config = ray.train.DataConfig()  # shards of the train and valid windows
        workers, cpus, gpu, max_failures = (config.train.num_workers, config.train.cpus_per_worker,
                                            config.train.use_gpu, config.train.max_failures)
    else:
        loop, loop_config = train_nmf.train_loop, {}
        data_config = ray.train.DataConfig(datasets_to_split=[])  # each worker keeps its own columns
        workers, cpus, gpu, max_failures = (config.nmf.num_workers, config.nmf.cpus_per_worker,
                                            config.nmf.use_gpu, config.nmf.max_failures)
    storage, name = run_dir.rsplit("/", 1)
    trainer = TorchTrainer(
        loop,
        train_loop_config={"config": config_to_dict(config), **loop_config},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=gpu, resources_per_worker={"CPU": cpus, **({"GPU": 1} if gpu else {})}
        ),
        run_config=ray.train.RunConfig(
            name=name,
            **train_storage(storage),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=[TuneReportCallback()],
            worker_runtime_env={"env_vars": forwarded_env()},
        ),
        datasets=datasets,
        dataset_config=data_config,
    )
    result = trainer.fit()
    # Train's checkpoint path has no URL scheme on s3: name the folder under run_dir instead.
    return posixpath.join(run_dir, posixpath.basename(result.checkpoint.path)), dict(result.metrics)


def run_trial(params: dict[str, Any], base: dict, datasets: dict, songs: list, out_dir: str, env: dict) -> None:
    """The Tune function trainable: train one configuration, score it, report (see the module doc)."""
    import ray.tune

    from karaoke.config import config_from_dict

    os.environ.update(env)  # s3:// credentials on a cluster started without them
    config = trial_config(config_from_dict(base), params)
    trial_id = ray.tune.get_context().get_trial_id()
    run_dir = posixpath.join(out_dir, TRIALS, trial_id)
    start = time.perf_counter()
    checkpoint, last = _fit(config, datasets, run_dir)
    # Every DNN result carries the scheduler's metric and time, as ASHA and Tune's checks expect.
    last = {key: last[key] for key in (TIME_ATTR, SCHEDULER_METRIC) if config.tune.model == "dnn"}
    print(f"trial {trial_id} {params}: trained in {time.perf_counter() - start:.1f} s; scoring {len(songs)} songs")
    metrics = score_checkpoint(config.tune.model, checkpoint, songs, config)
    print(f"trial {trial_id}: {config.tune.criterion} at alpha {config.evaluation.alpha} = {metrics['criterion']:.3f} dB")
    ray.tune.report({**last, **metrics, "checkpoint_path": checkpoint})


def param_space(config: ExperimentConfig) -> dict[str, Any]:
    """Tune's param space: each dotted key's choices, as a grid or as a random choice."""
    from ray import tune

    pick = tune.grid_search if config.tune.search == "grid" else tune.choice
    return {key: pick(list(choices)) for key, choices in config.tune.search_space.items()}


def _scheduler(config: ExperimentConfig):
    """ASHA on the per-epoch validation loss of DNN trials; NMF trials (and `scheduler: none`) run to the end."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    tune_cfg = config.tune
    if tune_cfg.model != "dnn" or tune_cfg.scheduler == "none":
        return FIFOScheduler()
    max_t = max(tune_cfg.search_space.get("train.epochs", (config.train.epochs,)))
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        metric=SCHEDULER_METRIC,
        mode="min",
        max_t=max_t,
        grace_period=min(tune_cfg.grace_period, max_t),
        reduction_factor=tune_cfg.reduction_factor,
        # A trial that reaches the last epoch must go on to its scoring.
        stop_last_trials=False,
    )


def _trial_datasets(config: ExperimentConfig, dataset: str) -> dict:
    """The windows the trials train on, read and materialised once for all of them."""
    from pipelines.prepare import read_windows_dataset
    from pipelines.train_dnn import shuffled_train_windows
    from pipelines.train_nmf import COLUMNS

    if config.tune.model == "nmf":
        return {"train": read_windows_dataset(dataset, "train").select_columns(COLUMNS).materialize()}
    # The shards hold each song's windows together: shuffled once across songs, as `karaoke train dnn` does.
    return {
        "train": shuffled_train_windows(dataset, config.train.seed),
        "valid": read_windows_dataset(dataset, "valid").select_columns(["mixture", "ibm"]).materialize(),
    }


def _trials(grid) -> list[dict[str, Any]]:
    """One entry per trial: id, params, status (scored, stopped early by the scheduler, error), metrics."""
    trials = []
    for result in grid:
        metrics = dict(result.metrics or {})
        status = "error" if result.error else "scored" if "criterion" in metrics else "stopped"
        trial_id = metrics.get("trial_id") or posixpath.basename(str(result.path))
        trials.append({"trial_id": trial_id, "params": dict(result.config or {}), "status": status, "metrics": metrics,
                       "error": str(result.error).strip().splitlines()[-1] if result.error else None})
    return trials


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _result_rows(trials: list[dict], alphas: list[float], best_id: str) -> list[dict[str, Any]]:
    """One row per scored trial and alpha; list-valued choices (layer widths) as JSON text."""
    rows = []
    for trial in (t for t in trials if t["status"] == "scored"):
        values = {k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in trial["params"].items()}
        metrics = trial["metrics"]
        for alpha in alphas:
            scores = {c: metrics[metric_name(c, alpha)] for c in summary_columns()}
            rows.append({"trial_id": trial["trial_id"], **values, "alpha": alpha, "n_songs": metrics["n_songs"],
                         "best": trial["trial_id"] == best_id, **scores})
    return rows


def _write_outputs(
    out_dir: str, rows: list[dict], model: str, config: ExperimentConfig, checkpoint: str, document: dict
) -> None:
    """results.parquet/.csv, then best/ (config, verified `model` checkpoint copy, criterion.json last)."""
    from karaoke.config import save_config
    from karaoke.report import write_scores
    from karaoke.storage import is_url, local_copy, upload_folder

    url = is_url(out_dir)
    if not url:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    # Locally the staging folder sits in out_dir, so that best/ arrives by one rename.
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=None if url else out_dir) as staging:
        local = Path(staging)
        best = local / BEST
        with local_copy(checkpoint) as folder:
            shutil.copytree(folder, best / "checkpoint")
        if model == "dnn":
            from karaoke.models.dnn import load_dnn

            load_dnn(best / "checkpoint", config)
        else:
            from karaoke.models.nmf import load_bases

            load_bases(best / "checkpoint", config)
        save_config(config, best / "config.yaml")
        (best / MARKER).write_text(json.dumps(document, indent=1, allow_nan=False))
        if url:
            for name in ("results.csv", "results.parquet"):
                write_scores(rows, local / name)
            upload_folder(staging, out_dir, last=f"{BEST}/{MARKER}")
            return
        for name in ("results.csv", "results.parquet"):
            write_scores(rows, Path(out_dir) / name)
        shutil.rmtree(Path(out_dir) / BEST, ignore_errors=True)  # an unfinished earlier attempt's
        best.rename(Path(out_dir) / BEST)


def tune_experiment(config: ExperimentConfig, dataset: str, out_dir: str) -> TuneOutcome:
    """Run the config's tune on a prepared dataset into `out_dir` (folder or s3:// URL).

    Connects to the running Ray cluster (or starts a local one). Raises `KaraokeError` when
    `tune.num_samples` is 0, `out_dir` holds a finished tune, the dataset has no validation songs or
    was prepared with another stft/windows config, or no trial got as far as a finite criterion.
    """
    import ray
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from karaoke.config import TuneConfig, config_to_dict
    from karaoke.dataset import read_songs
    from karaoke.errors import KaraokeError
    from karaoke.storage import exists, is_url, join
    from pipelines.prepare import forwarded_env, train_storage
    from pipelines.train_dnn import _check_dataset

    tune_cfg = config.tune
    if tune_cfg.num_samples == 0:
        raise KaraokeError("tune.num_samples is 0, so there is nothing to tune; set it, e.g. --set tune.num_samples=4")
    out_dir = out_dir.rstrip("/") if is_url(out_dir) else os.path.abspath(out_dir)
    if exists(join(out_dir, BEST, MARKER)):
        raise KaraokeError(f"{out_dir}: holds a finished tune ({BEST}/{MARKER}); choose another --out")
    _check_dataset(config, dataset)
    songs = read_songs(dataset, "valid")
    if not songs:
        raise KaraokeError(
            f"{dataset}: no validation songs to score the trials on; prepare it with corpus.valid_fraction > 0"
        )
    if not ray.is_initialized():
        ray.init()
    ray.data.DataContext.get_current().enable_progress_bars = False
    start = time.perf_counter()
    trainable = tune.with_parameters(
        run_trial,
        base=config_to_dict(config),
        datasets=_trial_datasets(config, dataset),
        songs=[ray.put(song) for song in songs],
        out_dir=out_dir,
        env=forwarded_env(),
    )
    bundles = [{"CPU": 0.01}] + [{"CPU": tune_cfg.scoring_cpus}] * tune_cfg.scoring_tasks
    tuner = tune.Tuner(
        tune.with_resources(trainable, tune.PlacementGroupFactory(bundles)),
        param_space=param_space(config),
        tune_config=tune.TuneConfig(
            num_samples=tune_cfg.num_samples,
            scheduler=_scheduler(config),
            search_alg=BasicVariantGenerator(max_concurrent=tune_cfg.max_concurrent_trials, random_state=tune_cfg.seed),
        ),
        # an explicit s3 filesystem: trial actors may run in workers started without the driver's AWS_*
        run_config=tune.RunConfig(name=EXPERIMENT, **train_storage(out_dir)),
    )
    trials = _trials(tuner.fit())

    statuses = ", ".join(f"{t['trial_id']} {t['status']}" for t in trials)
    finite = [t for t in trials if t["status"] == "scored" and math.isfinite(t["metrics"]["criterion"])]
    if not finite:
        errors = "; ".join(f"{t['trial_id']}: {t['error']}" for t in trials if t["error"])
        raise KaraokeError(f"{out_dir}: no trial was scored ({statuses}){'; ' + errors if errors else ''}")
    best = max(finite, key=lambda t: t["metrics"]["criterion"])
    best_config = dataclasses.replace(trial_config(config, best["params"]), tune=TuneConfig())
    document = {
        "criterion": tune_cfg.criterion,
        "alpha": config.evaluation.alpha,
        "split": "valid",
        "mode": "max",
        "value": best["metrics"]["criterion"],
        "trial_id": best["trial_id"],
        "params": best["params"],
        "source_checkpoint": best["metrics"]["checkpoint_path"],
        "trials": [
            {"trial_id": t["trial_id"], "status": t["status"], "params": t["params"],
             "criterion": _finite(t["metrics"].get("criterion")), "error": t["error"]}
            for t in trials
        ],
    }
    rows = _result_rows(trials, scored_alphas(config), best["trial_id"])
    _write_outputs(out_dir, rows, tune_cfg.model, best_config, best["metrics"]["checkpoint_path"], document)
    print(
        f"tune: {len(trials)} trials ({statuses}) in {time.perf_counter() - start:.0f} s; best {best['trial_id']} "
        f"{best['params']}: {tune_cfg.criterion} {best['metrics']['criterion']:.3f} dB at alpha {config.evaluation.alpha}"
    )
    return TuneOutcome(best_config, join(out_dir, BEST, "checkpoint"), join(out_dir, "results.parquet"))


def main(argv: list[str] | None = None) -> None:
    from karaoke.cli import entry_point

    entry_point(["tune"], argv)


if __name__ == "__main__":
    main()
