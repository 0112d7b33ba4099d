"""Score mask estimators (the IBM, DNN and NMF checkpoints: `karaoke.estimators`) over the alpha grid on
one split, one parallel Ray task per (song, separator), into RUN/scores/ (the layout of `karaoke.report`).

    karaoke evaluate --config configs/demo.yaml --out runs/demo \
        [--dataset DATASET] [--dnn CHECKPOINT] [--nmf CHECKPOINT] [--no-ibm] [--set key=value ...]

Songs come from the prepared dataset (`--dataset`, its `songs/<split>/` shards) or, without one,
straight from the config's corpus. Each task computes the estimator's vocal probability once and
scores it (`score_song`: binary masks at every alpha, soft masks once when the config uses them)
whole-song and framewise (1 s) with the fast engine. Written, each through a rename:
RUN/scores/scores.parquet (one row per method, song, mask and alpha), summary.json (mean and 95%
confidence interval across songs per method, mask and alpha, and GNSDR/GSIR/GSAR), excerpt.npz
(Figure 1: 1.5 s of the first song separated by the DNN, see `excerpt_arrays`) and config.yaml. A method is given as (name, checkpoint): ("ibm", None),
("dnn", folder or URL), ("nmf", folder or URL).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

EXCERPT_SECONDS = 1.5


def score_song(song, method: str, checkpoint: str | None, config, excerpt: bool = False) -> dict[str, Any]:
    """Scores rows of one song and method (and the excerpt arrays if asked).

    Binary masks (Eq. 2) at every alpha of `evaluation.alphas`, and with `evaluation.mask` "soft"
    the soft masks once (at `evaluation.alpha`, which they ignore). The IBM does not depend on alpha
    or on the mask mode: it is scored once, binary at `evaluation.alpha`.
    """
    from karaoke.metrics import score_alpha_grid
    from karaoke.estimators import load_estimator, song_probability

    torch_threads(1)
    evaluation = config.evaluation
    features, probability = song_probability(load_estimator(method, checkpoint, config), song, config)
    mixture_stft = features.mixture_stft
    references = np.stack([song.vocals, song.accompaniment])
    rows = []
    for mode, alphas in scored_grid(method, evaluation):
        rows += score_alpha_grid(
            mixture_stft, probability, references, song.mixture, alphas, config.stft, song.sample_rate, mode
        )
    meta = {"method": method, "song_id": song.song_id, "split": song.split, "seconds": song.seconds}
    result: dict[str, Any] = {"rows": [meta | row for row in rows]}
    if excerpt:
        result["excerpt"] = excerpt_arrays(song, mixture_stft, probability, method, config)
    return result


def scored_grid(method: str, evaluation) -> list[tuple[str, tuple[float, ...]]]:
    """(mask mode, alphas) pairs a method is scored at (see `score_song`)."""
    if method == "ibm":
        return [("binary", (evaluation.alpha,))]
    grid = [("binary", tuple(evaluation.alphas))]
    return grid + [("soft", (evaluation.alpha,))] if evaluation.mask == "soft" else grid


def excerpt_arrays(song, mixture_stft: np.ndarray, probability: np.ndarray, method: str, config) -> dict[str, Any]:
    """Figure 1's data: `EXCERPT_SECONDS` of the song where its vocals are loudest, the sources
    and the method's binary-mask (Eq. 2) estimates at `evaluation.alpha` (the paper's figure)."""
    from karaoke.masks import masks_to_audio

    alpha = config.evaluation.alpha
    vocals, accompaniment = masks_to_audio(mixture_stft, probability, alpha, config.stft, len(song.mixture), "binary")
    n = min(len(song.mixture), int(EXCERPT_SECONDS * song.sample_rate))
    energy = np.concatenate([[0.0], np.cumsum(np.asarray(song.vocals, dtype=np.float64) ** 2)])
    start = int(np.argmax(energy[n:] - energy[:-n])) if len(energy) > n else 0
    part = slice(start, start + n)
    return {
        "mixture": song.mixture[part],
        "vocals": song.vocals[part],
        "accompaniment": song.accompaniment[part],
        "vocals_estimate": vocals[part],
        "accompaniment_estimate": accompaniment[part],
        "sample_rate": song.sample_rate,
        "n_fft": config.stft.n_fft,
        "hop_length": config.stft.hop_length,
        "song_id": song.song_id,
        "start_seconds": start / song.sample_rate,
        "method": method,
        "alpha": alpha,
    }


def torch_threads(n: int) -> None:
    """Parallel tasks on a small machine: one thread each, or they fight over the cores."""
    import torch

    torch.set_num_threads(n)


def load_split_songs(config, dataset: str | None, split: str) -> list:
    """The songs of a split: from a prepared dataset, else from the config's corpus."""
    if dataset is not None:
        from karaoke.dataset import read_songs

        return read_songs(dataset, split)
    from karaoke.corpora import generate_corpus, list_songs

    generate_corpus(config.corpus)
    return [s.load(config.corpus.sample_rate, config.corpus.mixing) for s in list_songs(config.corpus, split)]


def evaluate(
    config, out_dir: str | Path, methods: list[tuple[str, str | None]], dataset: str | None = None
) -> Path | str:
    """Score every (song, method) of `evaluation.split` in parallel Ray tasks; returns scores.parquet.

    `out_dir` is a folder or a URL (s3://...): there the tables are written locally, then uploaded
    with scores.parquet last. Checkpoints may be URLs too: each task fetches its own copy.
    """
    from karaoke.errors import KaraokeError
    from karaoke.storage import is_url, join, upload_folder

    if not methods:
        raise KaraokeError("nothing to evaluate: give --dnn and/or --nmf checkpoints, or keep the IBM")
    songs = load_split_songs(config, dataset, config.evaluation.split)
    if not songs:
        raise KaraokeError(f"no songs in split {config.evaluation.split!r}; set evaluation.split to one that has songs")
    if is_url(out_dir):
        with tempfile.TemporaryDirectory(prefix="karaoke-scores-") as staging:
            _score(config, Path(staging), methods, songs)
            upload_folder(staging, join(out_dir, "scores"), last="scores.parquet")
        return join(out_dir, "scores", "scores.parquet")
    return _score(config, Path(out_dir) / "scores", methods, songs)


def _score(config, scores_dir: Path, methods: list[tuple[str, str | None]], songs: list) -> Path:
    import ray

    from karaoke.config import save_config
    from karaoke.metrics import global_scores, summarise
    from karaoke.report import write_scores
    from karaoke.storage import write_file, write_json
    scores_dir.mkdir(parents=True, exist_ok=True)
    task = ray.remote(num_cpus=1)(score_song)
    config_ref = ray.put(config)
    # Figure 1 shows the DNN where there is one.
    names = [method for method, _ in methods]
    pictured = names.index("dnn") if "dnn" in names else 0
    futures = []
    for k, song in enumerate(songs):
        song_ref = ray.put(song)
        for p, (method, checkpoint) in enumerate(methods):
            futures.append(task.remote(song_ref, method, checkpoint, config_ref, excerpt=(k == 0 and p == pictured)))
    results = _gather(futures, f"scoring {len(songs)} songs x {len(methods)} methods")
    rows = [row for result in results for row in result["rows"]]

    summary = summarise(rows)
    for entry in summary:
        members = [r for r in rows if all(r[key] == entry[key] for key in ("method", "mask", "alpha"))]
        entry.update(global_scores(members))
    save_config(config, scores_dir / "config.yaml")
    # Undefined statistics (NaN: e.g. one song, no interval) become null: strict JSON.
    write_json(scores_dir / "summary.json", summary)
    (excerpt,) = [result["excerpt"] for result in results if "excerpt" in result]
    write_file(scores_dir / "excerpt.npz", lambda handle: np.savez(handle, **excerpt))
    # The table is written last: its presence means the evaluation finished.
    return write_scores(rows, scores_dir / "scores.parquet")


def _gather(futures: list, description: str) -> list:
    """`ray.get(futures)` in order, with a progress bar as tasks finish: scoring the NMF on a
    validation split takes tens of minutes on a small machine."""
    import ray
    from tqdm import tqdm

    index = {future: k for k, future in enumerate(futures)}
    results: list = [None] * len(futures)
    pending = list(futures)
    with tqdm(total=len(futures), desc=description, unit="task", mininterval=5) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for future in done:
                results[index[future]] = ray.get(future)
            bar.update(len(done))
    return results


def parse_methods(dnn: list[str], nmf: list[str], ibm: bool) -> list[tuple[str, str | None]]:
    return [("ibm", None)] * ibm + [("dnn", c) for c in dnn] + [("nmf", c) for c in nmf]


def evaluate_on_ray(config, out_dir: str | Path, methods: list[tuple[str, str | None]], dataset: str | None = None) -> Path:
    """`evaluate` after joining (or starting) a Ray cluster: the entry point of the CLI."""
    from pipelines.ray_runtime import connect

    connect()
    return evaluate(config, out_dir, methods, dataset)
