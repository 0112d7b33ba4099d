"""MIR-1K separation quality: train a DNN config and score DNN / NMF / IBM on the validation singers.

    python benchmarks/mir1k_quality.py --config configs/mir1k.yaml [--set train.epochs=5]
        [--valid-every 4] [--train-songs N] [--nmf] [--ibm] [--also-mask binary] [--json out.json]
        [--save DIR | --load DIR]
    python benchmarks/mir1k_quality.py --report a.json b.json [--figures FOLDER]

A plain single-process PyTorch run (no Ray) of what `karaoke run` does, for measuring options on a
small machine: the training windows are cut by `karaoke.features` exactly as `karaoke prepare`
cuts them (same `windows` section, remix partners drawn from all training clips), the network
trains with `karaoke.models.dnn.train_epoch`, and the validation clips are separated with Eq. 1
(`karaoke.inference.soft_mask`) and scored with the fast BSS-EVAL engine at every alpha of
`evaluation.alphas` under `evaluation.mask`. Printed per method: GNSDR / GSIR / GSAR of vocals and
accompaniment (length-weighted, MIR-1K convention) at alpha 0.5 and at the alpha of best vocal
GNSDR, and the training time. `--report` prints the table of earlier `--json` files, Figure 3's
comparison as a number (DNN SAR minus NMF SAR at equal SIR) and draws Figures 2 and 3.

docs/results.md gives each figure with the command that reproduces it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from karaoke.config import ExperimentConfig, load_config
from karaoke.mixing import MixedSong

REPORT_ALPHA = 0.5


def load_songs(config: ExperimentConfig, split: str, every: int = 1, limit: int | None = None) -> list[MixedSong]:
    """Every `every`-th clip of a split (sorted by id), at most `limit` of them, as mixed."""
    from karaoke.corpora import list_songs

    songs = sorted(list_songs(config.corpus, split), key=lambda s: s.song_id)[::every][:limit]
    return [s.load(config.corpus.sample_rate, config.corpus.mixing) for s in songs]


def training_arrays(songs: list[MixedSong], config: ExperimentConfig) -> dict[str, np.ndarray]:
    """Training windows of all songs: the loss's columns (mixture, and vocals and accompaniment when it
    needs them, float16; ibm uint8), each (n_windows, n_bins, T)."""
    from karaoke.features import remix_partners, song_features, song_training_rows

    from karaoke.models.dnn import training_columns

    columns = training_columns(config.train)
    by_id = {song.song_id: song for song in songs}
    parts = []
    for song in songs:
        partners = [by_id[i] for i in remix_partners(song.song_id, list(by_id), config)]
        rows = song_training_rows(song, song_features(song, config), config, partners)
        # narrow each song's windows at once: float32 windows of all songs would need 4x the memory
        parts.append({key: rows[key].astype(np.uint8 if key == "ibm" else np.float16) for key in columns})
    return {key: np.concatenate([p[key] for p in parts]) for key in columns}


def train_dnn(config: ExperimentConfig, rows: dict[str, np.ndarray], log=print, after_epoch=None) -> tuple[torch.nn.Module, float]:
    """Train the config's network on `rows` for train.epochs epochs; returns (model, seconds of training).
    `after_epoch(epoch, model)` (1-based epoch; the model in eval mode) runs after each epoch, untimed."""
    from karaoke.models.dnn import (
        build_model,
        make_loss,
        make_optimizer,
        schedule_learning_rate,
        train_epoch,
    )

    torch.manual_seed(config.train.seed)
    rng = np.random.default_rng(config.train.seed)
    model = build_model(config)
    optimizer, loss_fn = make_optimizer(model, config.train), make_loss(config.train)
    size, n = config.train.batch_size, len(rows["mixture"])
    start = time.perf_counter()
    for epoch in range(config.train.epochs):
        schedule_learning_rate(optimizer, config.train, epoch + 1)
        order = rng.permutation(n)
        batches = (
            {key: torch.from_numpy(value[np.sort(order[i : i + size])]) for key, value in rows.items()}
            for i in range(0, n, size)
        )
        stats = train_epoch(model, batches, optimizer, loss_fn, torch.device("cpu"))
        log(f"  epoch {epoch + 1}: loss {stats.loss:.4f} accuracy {stats.accuracy:.4f} ({time.perf_counter() - start:.0f} s)")
        if after_epoch is not None:
            paused = time.perf_counter()
            after_epoch(epoch + 1, model.eval())
            model.train()
            start += time.perf_counter() - paused
    return model.eval(), time.perf_counter() - start


def score_method(estimator, songs: list[MixedSong], config: ExperimentConfig, modes: list[str]) -> dict[str, list[dict]]:
    """Score rows (one per song and alpha, with `seconds`) of a `karaoke.estimators.MaskEstimator`,
    for each mask mode of `modes` (the estimator runs once per song)."""
    from karaoke.estimators import song_probability
    from karaoke.metrics import score_alpha_grid

    rows: dict[str, list[dict]] = {mode: [] for mode in modes}
    for song in songs:
        features, probability = song_probability(estimator, song, config)
        mixture_stft = features.mixture_stft
        references = np.stack([song.vocals, song.accompaniment])
        for mode in modes:
            for row in score_alpha_grid(
                mixture_stft, probability, references, song.mixture, config.evaluation.alphas, config.stft, mode=mode
            ):
                rows[mode].append({**row, "song_id": song.song_id, "seconds": song.seconds})
    return rows


def summary(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Global scores at alpha 0.5 and at the alpha of best vocal GNSDR: {"0.5": {...}, "best": {...}}."""
    from karaoke.metrics import global_scores

    by_alpha = {}
    for alpha in sorted({r["alpha"] for r in rows}):
        by_alpha[alpha] = {"alpha": alpha, **global_scores([r for r in rows if r["alpha"] == alpha])}
    best = max(by_alpha.values(), key=lambda s: s["vocals_gnsdr"])
    closest = min(by_alpha, key=lambda a: abs(a - REPORT_ALPHA))
    return {"0.5": by_alpha[closest], "best": best, "sweep": list(by_alpha.values())}


def nmf_estimator(config: ExperimentConfig, train_songs: list[MixedSong]):
    """Fit the NMF bases on the paper's training windows of `train_songs`; returns (estimator, seconds)."""
    from karaoke.estimators import NmfEstimator
    from karaoke.features import song_features, training_rows
    from karaoke.models.nmf import fit_nmf, window_keys

    parts, keys = [], []
    for song in train_songs:
        rows = training_rows(song_features(song, config), config)
        parts.append(rows)
        keys.append(window_keys([song.song_id] * len(rows["start_frame"]), rows["start_frame"]))
    V = torch.from_numpy(
        np.stack([np.concatenate([p[name] for p in parts]).reshape(-1, config.n_inputs).T for name in ("vocals", "accompaniment")])
    ).float().contiguous()
    start = time.perf_counter()
    W, _, _ = fit_nmf(V, np.concatenate(keys), config.nmf.n_components, config.nmf.train_iterations, config.nmf.seed)
    seconds = time.perf_counter() - start
    nmf = config.nmf
    estimator = NmfEstimator(
        W[0], W[1], config.windows.n_frames, nmf.test_iterations, nmf.seed, nmf.test_tolerance, nmf.test_precision
    )
    return estimator, seconds


def format_row(name: str, scores: dict, train_seconds: float | None) -> str:
    cells = []
    for key in ("0.5", "best"):
        s = scores[key]
        cells.append(
            f"{s['alpha']:.2f} | {s['vocals_gnsdr']:.2f} / {s['vocals_gsir']:.2f} / {s['vocals_gsar']:.2f} | "
            f"{s['accompaniment_gnsdr']:.2f} / {s['accompaniment_gsir']:.2f} / {s['accompaniment_gsar']:.2f}"
        )
    seconds = "-" if train_seconds is None else f"{train_seconds / 60:.1f} min"
    return f"| {name} | " + " | ".join(cells) + f" | {seconds} |"


def report(paths: list[str], out_dir: str | None) -> None:
    """Print the markdown table of result files written by --json (and Figures 2 and 3 of the
    methods that kept their per-song rows into `out_dir`)."""
    from karaoke.figures import figure_alpha_curves, figure_sar_vs_sir, gap_text, save_figure
    from karaoke.metrics import summarise

    print("| method | alpha | vocal GNSDR / GSIR / GSAR | accomp. GNSDR / GSIR / GSAR | best alpha | vocal | accomp. | train |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    sweeps, rows = {}, []
    for path in paths:
        results = json.loads(Path(path).read_text())
        for key, scores in results.items():
            if not isinstance(scores, dict) or "0.5" not in scores:
                continue
            label = f"{results['name']} {key} ({scores.get('mask', 'binary')}, {results['valid_clips']} clips)"
            print(format_row(label, scores, scores.get("train_seconds")))
            method = key.split("_")[0]
            # Figures and the SAR comparison: the binary-mask sweeps that kept their per-clip rows.
            if scores.get("mask", "binary") == "binary" and method in ("dnn", "nmf") and scores.get("rows"):
                sweeps[method] = scores["sweep"]
                rows += [{**row, "method": method} for row in scores["rows"]]
    # Each method over the clips it was scored on (the NMF's hop-1 fits are costly on a CPU, so it
    # may have fewer): the curves' 95% intervals show how much that matters.
    table = summarise(rows) if rows else []
    if {"dnn", "nmf"} <= set(sweeps):
        for source in ("mean", "vocals", "accompaniment"):
            print(f"{source}: {gap_text(table, source)}")
    if out_dir and rows:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_figure(figure_alpha_curves(table), Path(out_dir) / "figure2.png")
        save_figure(figure_sar_vs_sir(table), Path(out_dir) / "figure3.png")
        counts = {m: len({r["song_id"] for r in rows if r["method"] == m}) for m in sweeps}
        print(f"figures in {out_dir} (clips per method: {counts})")


def main(argv: list[str] | None = None) -> dict:
    from karaoke.estimators import DnnEstimator, IdealBinaryMask

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mir1k.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--name", default=None, help="row label (default: the config name)")
    parser.add_argument("--valid-every", type=int, default=1, help="score every N-th validation clip")
    parser.add_argument("--train-songs", type=int, default=None, help="train on the first N training clips")
    parser.add_argument("--no-dnn", dest="dnn", action="store_false")
    parser.add_argument("--nmf", action="store_true", help="also fit and score the NMF baseline")
    parser.add_argument("--ibm", action="store_true", help="also score the ideal binary mask")
    parser.add_argument("--also-mask", action="append", default=[], choices=["binary", "soft"],
                        help="also score the DNN/NMF masks in this mode (the network runs once)")
    parser.add_argument("--score-every", type=int, default=0, metavar="E",
                        help="also score the DNN (config's mask, alpha 0.5) after every E-th epoch: the learning curve")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the scores here")
    parser.add_argument("--save", default=None, metavar="DIR", help="save the trained DNN here (a karaoke checkpoint)")
    parser.add_argument("--load", default=None, metavar="DIR",
                        help="score this DNN checkpoint (e.g. RUN/dnn/epoch_0010 of `karaoke run`) instead of training one")
    parser.add_argument("--report", nargs="+", default=None, metavar="JSON",
                        help="only print the table (and figures into --figures) of earlier --json files")
    parser.add_argument("--figures", default=None, help="folder for Figures 2 and 3 with --report")
    args = parser.parse_args(argv)
    if args.report:
        report(args.report, args.figures)
        return {}
    torch.set_num_threads(args.threads)
    config = load_config(args.config, args.overrides)
    name = args.name or config.name

    # --load scores a trained network: the training clips are read only for a network or NMF to fit
    needs_training = (args.dnn and not args.load) or args.nmf
    train_songs = load_songs(config, "train", limit=args.train_songs) if needs_training else []
    valid_songs = load_songs(config, "valid", every=args.valid_every)
    print(f"{name}: {len(train_songs)} training clips, {len(valid_songs)} validation clips "
          f"({sum(s.seconds for s in valid_songs):.0f} s)", flush=True)
    results: dict = {"name": name, "config": args.config, "overrides": args.overrides, "valid_clips": len(valid_songs)}
    modes = [config.evaluation.mask] + [m for m in args.also_mask if m != config.evaluation.mask]
    lines = []

    def record(key: str, label: str, scored: dict[str, list[dict]], seconds: float | None, **extra) -> None:
        for mode, rows in scored.items():
            suffix = "" if mode == config.evaluation.mask else f"_{mode}"
            results[key + suffix] = {**summary(rows), "mask": mode, "train_seconds": seconds, "rows": rows, **extra}
            lines.append(format_row(f"{label} ({mode})", results[key + suffix], seconds))

    if args.dnn and args.load:
        from karaoke.models.dnn import load_dnn

        model, _, card = load_dnn(args.load, config)
        seconds = card.get("metrics", {}).get("train_seconds")
        record("dnn", f"DNN {name} ({args.load})", score_method(DnnEstimator(model, config.windows.n_frames), valid_songs, config, modes), seconds)
    elif args.dnn:
        rows = training_arrays(train_songs, config)
        print(f"  {len(rows['mixture'])} training windows", flush=True)
        curve = results["curve"] = []

        def score_epoch(epoch: int, model: torch.nn.Module) -> None:
            if args.score_every and epoch % args.score_every == 0 and epoch < config.train.epochs:
                half = replace(config, evaluation=replace(config.evaluation, alphas=(REPORT_ALPHA,)))
                scores = summary(score_method(DnnEstimator(model, half.windows.n_frames), valid_songs, half, [config.evaluation.mask])[config.evaluation.mask])["0.5"]
                curve.append({"epoch": epoch, **scores})
                print(f"  epoch {epoch}: vocal GNSDR {scores['vocals_gnsdr']:.2f} dB, accompaniment "
                      f"{scores['accompaniment_gnsdr']:.2f} dB at alpha {REPORT_ALPHA} ({config.evaluation.mask})", flush=True)

        model, seconds = train_dnn(config, rows, log=lambda line: print(line, flush=True), after_epoch=score_epoch)
        if args.save:
            from karaoke.models.dnn import save_dnn

            save_dnn(args.save, model, config, config.train.epochs, {"train_seconds": seconds})
        start = time.perf_counter()
        record("dnn", f"DNN {name}", score_method(DnnEstimator(model, config.windows.n_frames), valid_songs, config, modes), seconds,
               windows=len(rows["mixture"]))
        print(f"  scored in {time.perf_counter() - start:.0f} s", flush=True)
    if args.nmf:
        estimator, seconds = nmf_estimator(config, train_songs)
        record("nmf", f"NMF K={config.nmf.n_components}", score_method(estimator, valid_songs, config, modes), seconds)
    if args.ibm:
        record("ibm", "IBM", score_method(IdealBinaryMask(), valid_songs, config, ["binary"]), None)
    print("| method | alpha | vocal GNSDR / GSIR / GSAR | accomp. GNSDR / GSIR / GSAR | best alpha | vocal | accomp. | train |")
    print("\n".join(lines), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
