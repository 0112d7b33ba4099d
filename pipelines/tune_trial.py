"""One Ray Tune trial of `pipelines.tune`: train a configuration in a `TorchTrainer` whose reports
reach Tune, then score its checkpoint on the validation songs over the alpha grid in parallel Ray
tasks, and report the per-alpha means and the criterion.

1. Training runs the loop of `pipelines.train_dnn` (or `pipelines.train_nmf`); `TuneReportCallback`
   forwards each epoch's report, so ASHA can stop a DNN trial whose validation loss trails (NMF
   trials run to the end). Checkpoints go to OUT/trials/<trial id>/.
2. Each validation song's vocal probability is computed once (one Ray task per song) and the alphas
   of `evaluation.alphas` are scored in parallel Ray tasks, all inside the trial's placement group:
   the trial itself takes 0.01 CPU, its tasks `tune.scoring_tasks` bundles of `tune.scoring_cpus`
   (the Train workers get a placement group of their own).
3. The report holds the mean over songs of every score at every alpha (`vocals_sdr_a0.50`,
   `mean_sar_a0.30`, ...) and `criterion`: the mean `tune.criterion` at `evaluation.alpha`.
"""

from __future__ import annotations

import posixpath
import time
from typing import Any

from karaoke.config import ExperimentConfig

TRIALS = "trials"
# ASHA's clock and metric: reported by DNN trials every epoch.
TIME_ATTR, SCHEDULER_METRIC = "epoch", "valid_loss"


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
    """(mixture STFT, vocal probability), each (n_bins, n_frames), of one song under one checkpoint."""
    from karaoke.estimators import load_estimator, song_probability
    from pipelines.evaluate import torch_threads

    torch_threads(1)
    features, probability = song_probability(load_estimator(method, checkpoint, config), song, config)
    return features.mixture_stft, probability


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

    tune_cfg = config.tune
    alphas = scored_alphas(config)
    slices = min(len(alphas), -(-tune_cfg.scoring_tasks // len(songs)))
    chunks = [[float(a) for a in chunk] for chunk in np.array_split(alphas, slices)]
    options = {"num_cpus": tune_cfg.scoring_cpus}
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
    from ray.tune.integration.ray_train import TuneReportCallback

    from karaoke.config import config_to_dict
    from pipelines import train_dnn, train_nmf
    from pipelines.ray_runtime import make_trainer

    if config.tune.model == "dnn":
        loop, loop_config = train_dnn.train_loop_per_worker, {"resume_from": None, "has_valid": True}
        data_config = ray.train.DataConfig()  # shards of the train and valid windows
        workers = config.resources.dnn
    else:
        loop, loop_config = train_nmf.train_loop, {}
        data_config = ray.train.DataConfig(datasets_to_split=[])  # each worker keeps its own columns
        workers = config.resources.nmf
    trainer = make_trainer(
        loop,
        {"config": config_to_dict(config), **loop_config},
        workers,
        run_dir,
        datasets,
        dataset_config=data_config,
        num_to_keep=1,
        callbacks=[TuneReportCallback()],
    )
    result = trainer.fit()
    # Train's checkpoint path has no URL scheme on s3: name the folder under run_dir instead.
    return posixpath.join(run_dir, posixpath.basename(result.checkpoint.path)), dict(result.metrics)


def run_trial(params: dict[str, Any], base: dict, datasets: dict, songs: list, out_dir: str) -> None:
    """The Tune function trainable: train one configuration, score it, report (see the module doc)."""
    import ray.tune

    from karaoke.config import config_from_dict

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
