"""The main job: the whole experiment of a config into one run directory (a folder or s3:// URL).

    karaoke run --config configs/demo.yaml [--out RUN] [--set key=value ...]
    ray job submit --working-dir . -- python -m karaoke_cli run ...     (on a cluster)

Stages, in order, each into its own part of RUN:
    prepare   RUN/dataset/         Ray Data: songs -> STFT, IBM, windows -> Parquet shards
    tune      RUN/tune/            Ray Tune sweep (only when tune.num_samples > 0); later stages
                                   use the best trial's config
    dnn       RUN/dnn/epoch_NNNN/  Ray Train: the mask DNN, a checkpoint per epoch
    nmf       RUN/nmf/bases/       Ray Train: distributed KL-NMF bases
    alpha     RUN/valid/scores/    every alpha scored on the validation split; the best alpha per
                                   method (highest mean over songs of the average vocal and accompaniment SDR) is chosen there
    evaluate  RUN/scores/          DNN, NMF and IBM scored over the alpha grid on evaluation.split
    report    RUN/report/          Figures 1-3 and report.md; RUN/results.json holds the headline
Each finished stage writes RUN/stages/<stage>.json last. A rerun skips a stage whose record is there,
was made with the same config sections, and whose outputs pass their check (the manifest and its
shards, a checkpoint's SHA-256, the scores' methods and alphas); otherwise it runs it again,
resuming training from the last checkpoint. Training outputs of another config are never
overwritten: the run stops and says so.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from karaoke.config import STAGE_SECTIONS
from pipelines.run_stages import (
    Run,
    check_dataset,
    check_dnn,
    check_nmf,
    check_report,
    check_scores,
    check_tune,
    guard,
    run_stage,
    storage_errors,
)

# The alpha chosen per method maximises the mean over songs of the average of the vocal and the
# accompaniment SDR (Figure 2a): vocal SDR alone favours low alphas, where the accompaniment is
# barely separated.
SELECTION_METRIC = "mean_sdr"


# --- the stages -----------------------------------------------------------------------------------


def prepare_stage(run: Run) -> dict:
    from karaoke.errors import KaraokeError
    from pipelines.prepare import prepare_dataset, summary_line

    start = time.perf_counter()
    manifest = prepare_dataset(run.config, run.path("dataset"))
    print(f"  {summary_line(manifest, time.perf_counter() - start)}")
    if manifest["splits"]["train"]["windows"] == 0:
        raise KaraokeError(f"{run.path('dataset')}: no training windows; check corpus.root and the corpus split settings")
    return {"songs": {k: v["songs"] for k, v in manifest["splits"].items()}, "failed": manifest["failed"]}


def tune_stage(run: Run) -> dict:
    from karaoke.config import config_to_dict
    from pipelines.tune import tune_experiment

    outcome = tune_experiment(run.config, run.path("dataset"), run.path("tune"))
    print(f"  best trial's config: {run.path('tune', 'best')}")
    return {"best_config": config_to_dict(outcome.best_config), "results": str(outcome.results)}


def dnn_stage(run: Run) -> dict:
    from karaoke.checkpoint import latest_checkpoint
    from pipelines.train_dnn import train_dnn

    guard(run, run.path("dnn"), "dnn")
    last = latest_checkpoint(run.path("dnn"))
    if last is not None:
        print(f"  resuming from {last}")
    result = train_dnn(run.config, run.path("dataset"), run.path("dnn"), resume=last is not None)
    return {"checkpoint": result.checkpoint_path, "metrics": result.metrics}


def nmf_stage(run: Run) -> dict:
    from karaoke.storage import exists
    from pipelines.train_nmf import RUN_NAME, train_nmf

    guard(run, run.path("nmf"), "nmf")
    resume = exists(run.path("nmf", "ray", RUN_NAME))
    if resume:
        print(f"  resuming from the latest checkpoint under {run.path('nmf', 'ray', RUN_NAME)}")
    return {"bases": str(train_nmf(run.config, run.path("dataset"), run.path("nmf"), resume=resume))}


def run_methods(run: Run) -> list[tuple[str, str | None]]:
    from karaoke.checkpoint import latest_checkpoint

    return [("dnn", latest_checkpoint(run.path("dnn"))), ("nmf", run.path("nmf", "bases")), ("ibm", None)]


def scores_stage(run: Run, split: str, out: str) -> dict:
    from pipelines.evaluate import evaluate

    config = replace(run.config, evaluation=scored_evaluation(run.config, split))
    return {"scores": str(evaluate(config, out, run_methods(run), run.path("dataset")))}


def scored_evaluation(config, split: str):
    """The evaluation section a scores stage runs: on `split`, over `evaluation.alphas` and the
    reported `evaluation.alpha`."""
    evaluation = config.evaluation
    return replace(evaluation, split=split, alphas=tuple(sorted({*evaluation.alphas, evaluation.alpha})))


def best_alphas(scores: str) -> dict[str, float]:
    """Per method, the alpha of the highest `SELECTION_METRIC` (binary masks, Eq. 2) across the
    songs of a scores folder."""
    import numpy as np

    from karaoke.metrics import summarise
    from karaoke.report import read_scores
    from karaoke.storage import local_copy

    with local_copy(scores) as folder:
        summary = summarise(read_scores(Path(folder) / "scores.parquet"))
    best: dict[str, tuple[float, float]] = {}
    for row in (r for r in summary if r["mask"] == "binary"):
        value = row[SELECTION_METRIC]
        if np.isfinite(value) and (row["method"] not in best or value > best[row["method"]][0]):
            best[row["method"]] = (value, row["alpha"])
    return {method: alpha for method, (_, alpha) in best.items()}


def report_stage(run: Run, chosen: dict[str, float], chosen_on: str) -> dict:
    """Figures and report.md (written locally, then uploaded for a URL run) and RUN/results.json."""
    import numpy as np

    from karaoke.figures import PANELS, sar_gap_at_equal_sir
    from karaoke.metrics import global_scores, summarise
    from karaoke.report import read_scores, write_report
    from karaoke.storage import download_folder, is_url, upload_folder, write_json

    with tempfile.TemporaryDirectory(prefix="karaoke-report-") as staging:
        local = Path(staging) if is_url(run.root) else Path(run.root)
        if is_url(run.root):
            download_folder(run.path("scores"), local / "scores")
        write_report(local)
        rows = read_scores(local / "scores" / "scores.parquet")
        if is_url(run.root):
            upload_folder(local / "report", run.path("report"), last="report.md")
    alpha = run.config.evaluation.alpha
    results: dict[str, Any] = {"split": run.config.evaluation.split, "alpha_chosen_on": chosen_on, "methods": {}}
    for method in sorted({r["method"] for r in rows}):
        entry = {}
        for label, mask, a in (("alpha", "binary", alpha), ("best_alpha", "binary", chosen.get(method, alpha)), ("soft", "soft", alpha)):
            members = [r for r in rows if r["method"] == method and r["mask"] == mask and abs(r["alpha"] - a) < 1e-9]
            if not members:
                continue
            (summary,) = summarise(members)
            mixture = {f"{s}_sdr_mixture": float(np.nanmean([r[f"{s}_sdr_mixture"] for r in members]))
                       for s in ("vocals", "accompaniment")}
            entry[label] = {"mask": mask, "alpha": a, **{k: summary[k] for k in _HEADLINE}, **mixture, **global_scores(members)}
        results["methods"][method] = entry
    summary = summarise(rows)
    results["sar_gap_at_equal_sir"] = {panel: sar_gap_at_equal_sir(summary, panel) for panel, _ in PANELS}
    write_json(run.path("results.json"), results)
    return {"results": run.path("results.json")}


_HEADLINE = ("n_songs", "vocals_sdr", "vocals_sir", "vocals_sar", "accompaniment_sdr")
_ROW_LABELS = {"alpha": "binary", "best_alpha": "binary*", "soft": "soft"}


def print_results(results: dict) -> None:
    print(f"\nResults on the {results['split']} split (mean over songs; GNSDR = SDR gain over the mixture, dB):")
    print(f"{'method':<8}{'mask':>8}{'alpha':>7}{'vocal SDR':>11}{'SIR':>8}{'SAR':>8}{'GNSDR':>8}{'acc SDR':>9}{'mix SDR':>9}")
    for method, entry in results["methods"].items():
        for k, (label, row) in enumerate(entry.items()):
            cells = [row["vocals_sdr"], row["vocals_sir"], row["vocals_sar"], row["vocals_gnsdr"],
                     row["accompaniment_sdr"], row["vocals_sdr_mixture"]]
            text = "".join(f"{c:>{w}.2f}" if c is not None else f"{'-':>{w}}" for c, w in zip(cells, (11, 8, 8, 8, 9, 9)))
            print(f"{method if k == 0 else '':<8}{_ROW_LABELS[label]:>8}{row['alpha']:>7.2f}{text}")
    print(f"(binary*: Eq. 2 at the alpha chosen on the {results['alpha_chosen_on']} split)")
    print("\nThe paper's Figure 3: DNN SAR - NMF SAR at equal SIR, binary masks over 0.1 < alpha < 0.9")
    from karaoke.figures import PAPER_SAR_GAP

    for panel, gap in results.get("sar_gap_at_equal_sir", {}).items():
        value = f"{gap:+.2f} dB" if gap is not None else "n/a (no overlapping SIR range)"
        paper = f"paper {PAPER_SAR_GAP[panel]}" if panel in PAPER_SAR_GAP else ""
        print(f"  {panel:<14}{value:>10}  {paper}")
    mean = results.get("sar_gap_at_equal_sir", {}).get("mean")
    if mean is not None:
        verdict = "reproduces" if mean > 0 else "does not reproduce"
        print(f"  this run {verdict} the paper's finding (the DNN's SAR above the NMF's at equal SIR)")


def tuned_config(run: Run) -> Run | None:
    """The run as its finished tune stage left it (the best trial's config), or None before that."""
    from karaoke.config import config_from_dict
    from karaoke.storage import read_json
    from pipelines.run_stages import digest

    record = read_json(run.path("stages", "tune.json"))
    if not record or record.get("digest") != digest(run.config, "tune"):
        return None
    return Run(run.root, config_from_dict(record["best_config"], source=run.path("stages", "tune.json")))


def run_experiment(config, run_dir: str) -> str:
    """Run (or resume) every stage of `config` into `run_dir`; returns the run directory. Storage
    that stops answering is a `StorageError` (`pipelines.run_stages.storage_errors`)."""
    from karaoke.storage import is_url

    root = run_dir if is_url(run_dir) else os.path.abspath(run_dir)
    with storage_errors(Run(root, config), "the run"):
        return _every_stage(config, root)


def _every_stage(config, root: str) -> str:
    from karaoke.config import config_from_dict, save_config
    from karaoke.dataset import DatasetError, split_files
    from karaoke.storage import join, read_json
    from pipelines.ray_runtime import connect

    run = Run(root, config)
    # A run refused for training of another model in its folders changes nothing, not even config.yaml.
    trained = tuned_config(run) if config.tune.num_samples > 0 else run
    if trained is not None:
        guard(trained, trained.path("dnn"), "dnn")
        guard(trained, trained.path("nmf"), "nmf")
    save_config(config, run.path("config.yaml"))
    connect()
    start = time.perf_counter()

    run_stage(run, "prepare", 1, lambda: check_dataset(run), lambda: prepare_stage(run))
    if config.tune.num_samples > 0:
        record = run_stage(run, "tune", 2, lambda: check_tune(run), lambda: tune_stage(run))
        run = Run(root, config_from_dict(record["best_config"], source=run.path("stages", "tune.json")))
    else:
        print(f"\n[2/{len(STAGE_SECTIONS)}] tune: skipped (tune.num_samples is 0)")
    run_stage(run, "dnn", 3, lambda: check_dnn(run), lambda: dnn_stage(run))
    run_stage(run, "nmf", 4, lambda: check_nmf(run), lambda: nmf_stage(run))

    methods = [m for m, _ in run_methods(run)]
    split = run.config.evaluation.split
    try:
        has_valid = split != "valid" and bool(split_files(run.path("dataset"), "valid", kind="song"))
    except DatasetError:
        has_valid = False
    if has_valid:
        valid = run.path("valid")
        run_stage(run, "alpha", 5, lambda: check_scores(join(valid, "scores"), methods, scored_evaluation(run.config, "valid")), lambda: scores_stage(run, "valid", valid))
        chosen, chosen_on = best_alphas(join(valid, "scores")), "valid"
    else:
        print(f"\n[5/{len(STAGE_SECTIONS)}] alpha: no separate validation songs; the alpha is chosen on {split}")
    run_stage(run, "evaluate", 6, lambda: check_scores(run.path("scores"), methods, scored_evaluation(run.config, split)), lambda: scores_stage(run, split, run.root))
    if not has_valid:
        chosen, chosen_on = best_alphas(run.path("scores")), split
    print(f"  best alpha per method ({SELECTION_METRIC}, {chosen_on} split): {chosen}")
    run_stage(run, "report", 7, lambda: check_report(run), lambda: report_stage(run, chosen, chosen_on))

    print_results(read_json(run.path("results.json")))
    print(f"\nrun directory: {root}  ({time.perf_counter() - start:.0f} s)")
    print(f"report: {run.path('report', 'report.md')}")
    return root
