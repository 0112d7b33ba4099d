"""Score mask estimators (the IBM, DNN and NMF checkpoints: `karaoke.estimators`) over the alpha grid on
one split, one parallel Ray task per (song, separator), into RUN/scores/ (the layout of `karaoke.report`).

    karaoke evaluate --config configs/demo.yaml --out runs/demo \
        [--dataset DATASET] [--dnn CHECKPOINT] [--nmf CHECKPOINT] [--no-ibm] [--set key=value ...]

Songs come from the prepared dataset (`--dataset`, its `songs/<split>/` shards) or, without one,
straight from the config's corpus, whose stems each task reads in blocks: the driver holds only the
songs' names. Each task computes the estimator's vocal probability once and scores it (`score_song`:
binary masks at every alpha, soft masks once when the config uses them) whole-song and framewise
(1 s) with the fast engine, in the memory of a block whatever the song's length
(`karaoke.song_scoring`). Written, each through a rename: RUN/scores/scores.parquet (one row per
method, song, mask and alpha), summary.json (mean and 95% confidence interval across songs per
method, mask and alpha, and GNSDR/GSIR/GSAR), excerpt.npz (Figure 1: 1.5 s of the first song
separated by the DNN) and config.yaml. A method is given as (name, checkpoint): ("ibm", None),
("dnn", folder or URL), ("nmf", folder or URL).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# Block length of a song held whole (a prepared dataset's) as it is scored.
BLOCK_SECONDS = 10.0


def score_song(song, method: str, checkpoint: str | None, config, excerpt: bool = False) -> dict[str, Any]:
    """Scores rows of one song and method (and Figure 1's excerpt if asked, see
    `karaoke.song_scoring.score_song`). `song` is a corpus `Song`, read from its stems in blocks,
    or the URL of a prepared dataset's song shard.

    Binary masks (Eq. 2) at every alpha of `evaluation.alphas`, and with `evaluation.mask` "soft"
    the soft masks once (at `evaluation.alpha`, which they ignore). The IBM does not depend on alpha
    or on the mask mode: it is scored once, binary at `evaluation.alpha`.
    """
    from karaoke.estimators import load_estimator
    from karaoke.song_scoring import score_song as score_audio

    torch_threads(1)
    audio = song_audio(song, config)
    estimator = load_estimator(method, checkpoint, config)
    scores = score_audio(audio, estimator, config, scored_grid(method, config.evaluation), excerpt)
    meta = {"method": method, "song_id": audio.song_id, "split": audio.split, "seconds": scores.seconds}
    result: dict[str, Any] = {"rows": [meta | row for row in scores.rows]}
    if scores.excerpt is not None:
        result["excerpt"] = scores.excerpt
    return result


def song_audio(song, config):
    """The `karaoke.mixing.SongAudio` of a corpus `Song` (streamed from its stems) or of a dataset's song shard URL."""
    from karaoke.mixing import song_audio as held_whole

    if isinstance(song, str):
        from karaoke.dataset import read_song

        whole = read_song(song)
        return held_whole(whole, round(BLOCK_SECONDS * whole.sample_rate))
    return song.audio(config.corpus.sample_rate, config.corpus.mixing)


def scored_grid(method: str, evaluation) -> list[tuple[str, tuple[float, ...]]]:
    """(mask mode, alphas) pairs a method is scored at (see `score_song`)."""
    if method == "ibm":
        return [("binary", (evaluation.alpha,))]
    grid = [("binary", tuple(evaluation.alphas))]
    return grid + [("soft", (evaluation.alpha,))] if evaluation.mask == "soft" else grid


def torch_threads(n: int) -> None:
    """Parallel tasks on a small machine: one thread each, or they fight over the cores."""
    import torch

    torch.set_num_threads(n)


def split_songs(config, dataset: str | None, split: str) -> list:
    """The songs of a split, each as `score_song` takes it: a prepared dataset's song shard URLs,
    else the config's corpus `Song`s (its files are read by the tasks)."""
    if dataset is not None:
        from karaoke.dataset import song_files

        return song_files(dataset, split)
    from karaoke.corpora import generate_corpus, list_songs

    generate_corpus(config.corpus)
    return list_songs(config.corpus, split)


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
    songs = split_songs(config, dataset, config.evaluation.split)
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
    for song in songs:
        song_ref = ray.put(song)
        for p, (method, checkpoint) in enumerate(methods):
            futures.append(task.remote(song_ref, method, checkpoint, config_ref, excerpt=(p == pictured)))
    results = _gather(futures, f"scoring {len(songs)} songs x {len(methods)} methods")
    rows = [row for result in results for row in result["rows"]]

    summary = summarise(rows)
    for entry in summary:
        members = [r for r in rows if all(r[key] == entry[key] for key in ("method", "mask", "alpha"))]
        entry.update(global_scores(members))
    save_config(config, scores_dir / "config.yaml")
    # Undefined statistics (NaN: e.g. one song, no interval) become null: strict JSON.
    write_json(scores_dir / "summary.json", summary)
    # Figure 1 shows the first song by id.
    excerpt = min((result["excerpt"] for result in results if "excerpt" in result), key=lambda e: str(e["song_id"]))
    write_file(scores_dir / "excerpt.npz", lambda handle: np.savez(handle, **excerpt))
    # The table is written last: its presence means the evaluation finished.
    return write_scores(rows, scores_dir / "scores.parquet")


def _gather(futures: list, description: str) -> list:
    """`ray.get(futures)` in order, with a progress bar as tasks finish: scoring the NMF on a
    validation split takes tens of minutes on a small machine. A task's `KaraokeError` (a song's
    file that cannot be read, named in its one line) is raised as itself, without Ray's traceback."""
    import ray
    from tqdm import tqdm

    from karaoke.errors import KaraokeError

    index = {future: k for k, future in enumerate(futures)}
    results: list = [None] * len(futures)
    pending = list(futures)
    with tqdm(total=len(futures), desc=description, unit="task", mininterval=5) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for future in done:
                try:
                    results[index[future]] = ray.get(future)
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, KaraokeError):
                        raise exc.cause from None
                    raise
            bar.update(len(done))
    return results


def parse_methods(dnn: list[str], nmf: list[str], ibm: bool) -> list[tuple[str, str | None]]:
    return [("ibm", None)] * ibm + [("dnn", c) for c in dnn] + [("nmf", c) for c in nmf]


def evaluate_on_ray(config, out_dir: str | Path, methods: list[tuple[str, str | None]], dataset: str | None = None) -> Path:
    """`evaluate` after joining (or starting) a Ray cluster: the entry point of the CLI."""
    from pipelines.ray_runtime import connect

    connect()
    return evaluate(config, out_dir, methods, dataset)
