"""Score soft-mask providers (the IBM, DNN and NMF checkpoints) over the alpha grid on one split,
one parallel Ray task per (song, provider), into RUN/scores/ (the layout of `karaoke.report`).

    python -m pipelines.evaluate --config configs/demo.yaml --out runs/demo \
        [--dataset DATASET] [--dnn CHECKPOINT] [--nmf CHECKPOINT] [--no-ibm] [--set key=value ...]

Songs come from the prepared dataset (`--dataset`, its `songs/<split>/` shards) or, without one,
straight from the config's corpus. Each task computes the provider's vocal probability once and
scores every alpha of `evaluation.alphas` whole-song and framewise (1 s) with the fast engine.
Written, each through a rename: RUN/scores/scores.parquet (one row per method, song, alpha),
summary.json (mean and 95% confidence interval across songs per method and alpha, and GNSDR/GSIR/
GSAR), excerpt.npz (the first song's first 10 s separated by the first provider at
`evaluation.alpha`, for Figure 1) and config.yaml.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

EXCERPT_SECONDS = 10.0


def vocal_probability(method: str, checkpoint: str | None, song, config) -> tuple[np.ndarray, np.ndarray]:
    """(mixture STFT, vocal probability), each (n_bins, n_frames), of one song under one provider."""
    from karaoke.features import song_features
    from karaoke.storage import local_copy

    features = song_features(song, config)
    if method == "ibm":
        probability = features.ibm.astype(np.float32)
    elif method == "dnn":
        from karaoke.inference import soft_mask
        from karaoke.models.dnn import load_dnn

        with local_copy(checkpoint) as folder:
            model, _, _ = load_dnn(folder, config)
        probability = soft_mask(model, features.mixture, config.windows.n_frames, scale=1.0)
    elif method == "nmf":
        from karaoke.models.nmf import load_bases, nmf_vocal_probability

        with local_copy(checkpoint) as folder:
            W_v, W_nv, _ = load_bases(folder, config)
        probability = nmf_vocal_probability(
            features.mixture, W_v, W_nv, config.windows.n_frames, config.nmf.test_iterations, config.nmf.seed
        )
    else:
        raise ValueError(f"unknown provider {method!r}; choose ibm, dnn or nmf")
    return features.mixture_stft, probability


def score_song(song, method: str, checkpoint: str | None, config, excerpt: bool = False) -> dict[str, Any]:
    """Scores rows of one song and provider over the alpha grid (and the excerpt arrays if asked)."""
    from karaoke.metrics import score_alpha_grid
    from karaoke.separate import masks_to_audio

    torch_threads(1)
    mixture_stft, probability = vocal_probability(method, checkpoint, song, config)
    references = np.stack([song.vocals, song.accompaniment])
    rows = score_alpha_grid(
        mixture_stft, probability, references, song.mixture, config.evaluation.alphas, config.stft, song.sample_rate,
        config.evaluation.mask,
    )
    meta = {"method": method, "song_id": song.song_id, "split": song.split, "seconds": song.seconds}
    result: dict[str, Any] = {"rows": [meta | row for row in rows]}
    if excerpt:
        n = min(len(song.mixture), int(EXCERPT_SECONDS * song.sample_rate))
        vocals, accompaniment = masks_to_audio(
            mixture_stft, probability, config.evaluation.alpha, config.stft, len(song.mixture), config.evaluation.mask
        )
        result["excerpt"] = {
            "mixture": song.mixture[:n],
            "vocals": song.vocals[:n],
            "accompaniment": song.accompaniment[:n],
            "vocals_estimate": vocals[:n],
            "accompaniment_estimate": accompaniment[:n],
            "sample_rate": song.sample_rate,
            "n_fft": config.stft.n_fft,
            "hop_length": config.stft.hop_length,
        }
    return result


def torch_threads(n: int) -> None:
    """Parallel tasks on a small machine: one thread each, or they fight over the cores."""
    import torch

    torch.set_num_threads(n)


def load_split_songs(config, dataset: str | None, split: str) -> list:
    """The songs of a split: from a prepared dataset, else from the config's corpus."""
    if dataset is not None:
        from karaoke.dataset import read_songs

        return read_songs(dataset, split)
    from karaoke.corpora import list_songs

    return [s.load(config.corpus.sample_rate, config.corpus.mixing) for s in list_songs(config.corpus, split)]


def evaluate(
    config, out_dir: str | Path, providers: list[tuple[str, str | None]], dataset: str | None = None
) -> Path | str:
    """Score every (song, provider) of `evaluation.split` in parallel Ray tasks; returns scores.parquet.

    `out_dir` is a folder or a URL (s3://...): there the tables are written locally, then uploaded
    with scores.parquet last. Checkpoints may be URLs too: each task fetches its own copy.
    """
    from karaoke.errors import KaraokeError
    from karaoke.storage import is_url, join, upload_folder

    if not providers:
        raise KaraokeError("nothing to evaluate: give --dnn and/or --nmf checkpoints, or keep the IBM")
    songs = load_split_songs(config, dataset, config.evaluation.split)
    if not songs:
        raise KaraokeError(f"no songs in split {config.evaluation.split!r}; set evaluation.split to one that has songs")
    if is_url(out_dir):
        with tempfile.TemporaryDirectory(prefix="karaoke-scores-") as staging:
            _score(config, Path(staging), providers, songs)
            upload_folder(staging, join(out_dir, "scores"), last="scores.parquet")
        return join(out_dir, "scores", "scores.parquet")
    return _score(config, Path(out_dir) / "scores", providers, songs)


def _score(config, scores_dir: Path, providers: list[tuple[str, str | None]], songs: list) -> Path:
    import ray

    from karaoke.config import save_config
    from karaoke.metrics import global_scores, summarise
    from karaoke.report import write_atomic, write_scores
    from karaoke.storage import write_json

    scores_dir.mkdir(parents=True, exist_ok=True)

    from pipelines.prepare import forwarded_env

    env = forwarded_env()  # s3:// checkpoints and songs, on workers started without the driver's AWS_*
    task = ray.remote(num_cpus=1, runtime_env={"env_vars": env} if env else None)(score_song)
    config_ref = ray.put(config)
    futures = []
    for k, song in enumerate(songs):
        song_ref = ray.put(song)
        for p, (method, checkpoint) in enumerate(providers):
            futures.append(task.remote(song_ref, method, checkpoint, config_ref, excerpt=(k == 0 and p == 0)))
    results = _gather(futures, f"scoring {len(songs)} songs x {len(providers)} methods")
    rows = [row for result in results for row in result["rows"]]

    summary = summarise(rows)
    for entry in summary:
        members = [r for r in rows if r["method"] == entry["method"] and r["alpha"] == entry["alpha"]]
        entry.update(global_scores(members))
    save_config(config, scores_dir / "config.yaml")
    # Undefined statistics (NaN: e.g. one song, no interval) become null: strict JSON.
    write_json(scores_dir / "summary.json", summary)
    write_atomic(scores_dir / "excerpt.npz", lambda tmp: _savez(tmp, results[0]["excerpt"]))
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


def _savez(path: Path, arrays: dict[str, Any]) -> None:
    # Through a handle: np.savez would append ".npz" to the temporary name.
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def parse_providers(dnn: list[str], nmf: list[str], ibm: bool) -> list[tuple[str, str | None]]:
    return [("ibm", None)] * ibm + [("dnn", c) for c in dnn] + [("nmf", c) for c in nmf]


def evaluate_on_ray(config, out_dir: str | Path, providers: list[tuple[str, str | None]], dataset: str | None = None) -> Path:
    """`evaluate` after joining (or starting) a Ray cluster: the entry point of the CLI."""
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(ignore_reinit_error=True, log_to_driver=False)
    return evaluate(config, out_dir, providers, dataset)


def main(argv: list[str] | None = None) -> None:
    from karaoke.cli import entry_point

    entry_point(["evaluate"], argv)


if __name__ == "__main__":
    main()
