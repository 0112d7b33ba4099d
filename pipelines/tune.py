"""Ray Tune job: a hyper-parameter search over the mask DNN (or the NMF baseline) in which every
trial is scored on the validation songs over the whole alpha grid.

    karaoke tune --config configs/demo.yaml --data DATASET --out RUN/tune [--set k=v]

The config's `tune` section (`karaoke.config.TuneConfig`) gives the search space (dotted keys of the
model's sections -> choices), the number of trials, the scheduler and the criterion. Each trial
(`pipelines.tune_trial.run_trial`) trains its configuration, scores it on the validation songs at
every alpha in parallel Ray tasks and reports `criterion`: the mean `tune.criterion` at
`evaluation.alpha` over the songs (higher is better). The winner is the trial of highest criterion.

ASHA stops a DNN trial by killing it, and with it its Train controller; the controller's worker
placement group is then released by Ray Train's `PlacementGroupCleaner`, which watches the
controller through Ray's state API, served by the dashboard. Without a dashboard the group stays
reserved until the driver exits and, on a small machine, later trials wait forever: with ASHA on,
`tune_experiment` refuses a Ray that has no dashboard, naming the fix.

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
from pipelines.tune_trial import (
    SCHEDULER_METRIC,
    TIME_ATTR,
    metric_name,
    run_trial,
    scored_alphas,
    summary_columns,
    trial_config,
)

EXPERIMENT = "ray"
BEST = "best"
MARKER = "criterion.json"


@dataclass(frozen=True)
class TuneOutcome:
    """The winner: its config, OUT/best/checkpoint (folder or URL) and the results table's path."""

    best_config: ExperimentConfig
    best_checkpoint: str
    results: str


def param_space(config: ExperimentConfig) -> dict[str, Any]:
    """Tune's param space: each dotted key's choices, as a grid or as a random choice."""
    from ray import tune

    pick = tune.grid_search if config.tune.search == "grid" else tune.choice
    return {key: pick(list(choices)) for key, choices in config.tune.search_space.items()}


def stops_trials(config: ExperimentConfig) -> bool:
    """Whether the tune's scheduler may stop trials early: ASHA, on DNN trials."""
    return config.tune.model == "dnn" and config.tune.scheduler != "none"


def _scheduler(config: ExperimentConfig):
    """ASHA on the per-epoch validation loss of DNN trials; NMF trials (and `scheduler: none`) run to the end."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    tune_cfg = config.tune
    if not stops_trials(config):
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


def require_state_api() -> None:
    """Raise `KaraokeError` unless Ray's state API answers: Ray Train releases a stopped trial's
    worker placement group only when it can see, through that API, that the trial's controller died
    (see the module doc). The probe asks the dashboard of the cluster this driver is connected to,
    never another cluster on the same machine."""
    import urllib.error
    import urllib.request

    from ray._private.worker import get_dashboard_url

    from karaoke.errors import KaraokeError

    try:
        url = get_dashboard_url()
        if not url:
            raise LookupError("the cluster reports no dashboard")
        try:
            urllib.request.urlopen(f"http://{url}/api/version", timeout=10).close()
        except urllib.error.HTTPError:
            pass  # an answer (e.g. authentication required): the dashboard is up
    except Exception as exc:  # noqa: BLE001 - any failure means the API is not there
        raise KaraokeError(
            "tune.scheduler asha needs Ray's state API, and this Ray has no dashboard "
            f"({type(exc).__name__}): a trial that ASHA stops would keep its workers' CPUs until the "
            "tune ends and later trials could wait forever. Start Ray with its dashboard (ray start "
            "--head --include-dashboard=true, or ray.init(include_dashboard=True); needs ray[default]) "
            "or set tune.scheduler: none"
        ) from None


def _trial_datasets(config: ExperimentConfig, dataset: str) -> dict:
    """The windows the trials train on, read and materialised once for all of them."""
    from karaoke.models.dnn import training_columns
    from pipelines.ray_runtime import read_windows_dataset
    from pipelines.train_dnn import shuffled_train_windows
    from pipelines.train_nmf import COLUMNS

    if config.tune.model == "nmf":
        return {"train": read_windows_dataset(dataset, "train").select_columns(COLUMNS).materialize()}
    # The shards hold each song's windows together: shuffled once across songs, as `karaoke train dnn` does.
    return {
        "train": shuffled_train_windows(dataset, config.train),
        "valid": read_windows_dataset(dataset, "valid").select_columns(training_columns(config.train)).materialize(),
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
    from karaoke.estimators import load_estimator
    from karaoke.report import write_scores
    from karaoke.storage import is_url, json_safe, local_copy, upload_folder

    url = is_url(out_dir)
    if not url:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    # Locally the staging folder sits in out_dir, so that best/ arrives by one rename.
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=None if url else out_dir) as staging:
        local = Path(staging)
        best = local / BEST
        with local_copy(checkpoint) as folder:
            shutil.copytree(folder, best / "checkpoint")
        load_estimator(model, str(best / "checkpoint"), config)  # verifies the copy
        save_config(config, best / "config.yaml")
        (best / MARKER).write_text(json.dumps(json_safe(document), indent=1, allow_nan=False))
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
    from karaoke.dataset import check_dataset_fits, read_songs
    from karaoke.errors import KaraokeError
    from karaoke.storage import exists, is_url, join
    from pipelines.ray_runtime import connect, train_storage

    tune_cfg = config.tune
    if tune_cfg.num_samples == 0:
        raise KaraokeError("tune.num_samples is 0, so there is nothing to tune; set it, e.g. --set tune.num_samples=4")
    out_dir = out_dir.rstrip("/") if is_url(out_dir) else os.path.abspath(out_dir)
    if exists(join(out_dir, BEST, MARKER)):
        raise KaraokeError(f"{out_dir}: holds a finished tune ({BEST}/{MARKER}); choose another --out")
    check_dataset_fits(config, dataset)
    songs = read_songs(dataset, "valid")
    if not songs:
        raise KaraokeError(
            f"{dataset}: no validation songs to score the trials on; prepare it with corpus.valid_fraction > 0"
        )
    connect(include_dashboard=stops_trials(config) or None)
    if stops_trials(config):
        require_state_api()
    ray.data.DataContext.get_current().enable_progress_bars = False
    start = time.perf_counter()
    trainable = tune.with_parameters(
        run_trial,
        base=config_to_dict(config),
        datasets=_trial_datasets(config, dataset),
        songs=[ray.put(song) for song in songs],
        out_dir=out_dir,
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
             "criterion": t["metrics"].get("criterion"), "error": t["error"]}
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
