"""`karaoke run`: every stage into one run directory (local and s3://), reruns that skip what is done,
and a killed driver whose rerun resumes training from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, small_config_dict

pytestmark = pytest.mark.slow

STAGES = ("prepare", "dnn", "nmf", "alpha", "evaluate", "report")


def run_config(synth_root, **sections) -> dict:
    """The small test config with a validation song (3 train, 1 valid, 1 test) and a short alpha grid."""
    sections.setdefault("evaluation", {"alphas": [0.3, 0.5, 0.7], "split": "test"})
    config = small_config_dict(str(synth_root), **sections)
    config["corpus"]["valid_fraction"] = 0.25
    return config


def test_local_run_has_every_stage_and_a_rerun_skips_them(ray_session, synth_root, tmp_path, capsys):
    from karaoke.config import config_from_dict
    from karaoke.errors import KaraokeError
    from karaoke.models.dnn import load_dnn
    from pipelines.run import run_experiment

    config = config_from_dict(run_config(synth_root))
    run_dir = Path(run_experiment(config, str(tmp_path / "run")))

    for stage in STAGES:
        assert json.loads((run_dir / "stages" / f"{stage}.json").read_text())["stage"] == stage
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["nmf"]["n_components"] == 8
    load_dnn(run_dir / "dnn" / "epoch_0002", config)
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["methods"]) == {"dnn", "nmf", "ibm"}
    assert results["alpha_chosen_on"] == "valid"
    ibm = results["methods"]["ibm"]["alpha"]
    assert ibm["vocals_sdr"] > ibm["vocals_sdr_mixture"] + 5  # the oracle mask separates
    for name in ("report.md", "figure1.png", "figure2.png", "figure3.png"):
        assert (run_dir / "report" / name).stat().st_size > 0
    # The alpha sweep gives Figure 3's numbers: in results.json, on the console, atop the report.
    gaps = results["sar_gap_at_equal_sir"]
    assert set(gaps) == {"mean", "vocals", "accompaniment"}
    out = capsys.readouterr().out
    assert "The paper's Figure 3: DNN SAR - NMF SAR at equal SIR" in out
    page = (run_dir / "report" / "report.md").read_text()
    assert page.splitlines()[2] == "## Does this run reproduce the paper?"
    for panel in ("mean", "vocals"):
        if gaps[panel] is not None:
            assert f"DNN SAR - NMF SAR at equal SIR: {gaps[panel]:+.2f} dB" in page

    mtimes = {p: p.stat().st_mtime_ns for p in (run_dir / "scores" / "scores.parquet", run_dir / "nmf" / "bases" / "checkpoint.json")}
    run_experiment(config, str(run_dir))
    out = capsys.readouterr().out
    assert out.count("done before:") == len(STAGES)
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items())

    # Damaged outputs fail their check and the stage runs again; a changed evaluation setting re-scores
    # without retraining.
    (run_dir / "report" / "figure2.png").unlink()
    changed = config_from_dict(run_config(synth_root, evaluation={"alphas": [0.4, 0.6], "split": "test"}))
    run_experiment(changed, str(run_dir))
    out = capsys.readouterr().out
    assert out.count("done before:") == 3  # prepare, dnn, nmf
    assert "figure2.png is missing" not in out  # the report reran because its config changed first
    assert (run_dir / "report" / "figure2.png").is_file()
    assert {m["alpha"]["alpha"] for m in json.loads((run_dir / "results.json").read_text())["methods"].values()} == {0.5}

    # Another network in the same run directory: refused, the trained checkpoints kept.
    wider = config_from_dict(run_config(synth_root, dnn={"hidden_sizes": [32]}))
    before = (run_dir / "config.yaml").read_text()
    with pytest.raises(KaraokeError, match=r"dnn: holds training of another model \(dnn.hidden_sizes: \[64\] there, \[32\] here\)"):
        run_experiment(wider, str(run_dir))
    assert sorted(p.name for p in (run_dir / "dnn").glob("epoch_*")) == ["epoch_0001", "epoch_0002"]
    assert (run_dir / "config.yaml").read_text() == before  # a refused command changes nothing
    # Another learning rate on the finished run: refused, never a result labelled with a rate its
    # weights were not trained with.
    faster = config_from_dict(run_config(synth_root, train={"learning_rate": 0.01}))
    with pytest.raises(KaraokeError, match=r"train.learning_rate: 0.1 there, 0.01 here"):
        run_experiment(faster, str(run_dir))
    assert (run_dir / "config.yaml").read_text() == before


def test_whole_run_into_s3(ray_session, s3_endpoint, synth_root, capsys):
    import s3fs

    from karaoke.config import config_from_dict
    from pipelines.run import run_experiment

    config = config_from_dict(run_config(synth_root, train={"epochs": 1}))
    run_experiment(config, "s3://test-bucket/runs/whole")
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.invalidate_cache()
    for key in (
        "config.yaml",
        "dataset/manifest.json",
        "dnn/epoch_0001/checkpoint.json",
        "nmf/bases/checkpoint.json",
        "nmf/objective.json",
        "valid/scores/scores.parquet",
        "scores/scores.parquet",
        "report/report.md",
        "report/figure2.png",
        "results.json",
        *(f"stages/{stage}.json" for stage in STAGES),
    ):
        assert fs.exists(f"test-bucket/runs/whole/{key}"), key
    results = json.loads(fs.cat("test-bucket/runs/whole/results.json"))
    assert set(results["methods"]) == {"dnn", "nmf", "ibm"}
    capsys.readouterr()
    run_experiment(config, "s3://test-bucket/runs/whole")
    assert capsys.readouterr().out.count("done before:") == len(STAGES)


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    children = [int(p) for p in out]
    return children + [d for c in children for d in _descendants(c)]


def test_killed_driver_then_the_same_command_resumes_training(ray_session, synth_root, tmp_path):
    """Fault: SIGKILL of the `karaoke run` driver (and its children) after its second DNN checkpoint.
    Expected: the same command again resumes from that checkpoint, finishes every stage, and the
    checkpoints written before the kill are kept as they were."""
    config_path = tmp_path / "config.yaml"
    # every epoch's checkpoint kept: the test checks those written before the kill are untouched
    config = run_config(synth_root, train={"epochs": 12}, resources={"dnn": {"keep_checkpoints": 12}})
    config_path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "karaoke_cli", "run", "--config", str(config_path), "--out", str(run_dir)]
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address, RAY_AUTH_MODE="token")
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    card = run_dir / "dnn" / "epoch_0002" / "checkpoint.json"
    deadline = time.monotonic() + 300
    while not card.is_file():
        assert driver.poll() is None, "the run ended before its second checkpoint"
        assert time.monotonic() < deadline, "no second DNN checkpoint within 300 s"
        time.sleep(0.2)
    for pid in [driver.pid, *_descendants(driver.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    driver.wait(timeout=30)
    kept = {c.parent.name: c.stat().st_mtime_ns for c in (run_dir / "dnn").glob("epoch_*/checkpoint.json")}
    assert "dnn.json" not in {p.name for p in (run_dir / "stages").glob("*.json")}

    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout
    cards = sorted((run_dir / "dnn").glob("epoch_*/checkpoint.json"))
    assert [c.parent.name for c in cards] == [f"epoch_{e:04d}" for e in range(1, 13)]
    for name, mtime in kept.items():
        assert (run_dir / "dnn" / name / "checkpoint.json").stat().st_mtime_ns == mtime
    history = json.loads(cards[-1].read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 13))
    assert (run_dir / "stages" / "report.json").is_file()


def test_tune_stage_feeds_its_best_config_to_training(ray_session, synth_root, tmp_path, capsys):
    """With `tune.num_samples` > 0 the run tunes first (here: NMF K over two trials) and trains the
    final model with the winner's values; a rerun skips the tune."""
    from karaoke.config import config_from_dict
    from karaoke.models.nmf import load_bases
    from pipelines.run import run_experiment

    tune = {"num_samples": 1, "model": "nmf", "search_space": {"nmf.n_components": [4, 6]}, "scheduler": "none"}
    config = config_from_dict(run_config(synth_root, train={"epochs": 1}, tune=tune))
    run_dir = Path(run_experiment(config, str(tmp_path / "run")))
    record = json.loads((run_dir / "stages" / "tune.json").read_text())
    best_k = record["best_config"]["nmf"]["n_components"]
    winner = json.loads((run_dir / "tune" / "best" / "criterion.json").read_text())
    assert best_k in (4, 6) and winner
    W_v, _, _ = load_bases(run_dir / "nmf" / "bases", config_from_dict(record["best_config"]))
    assert W_v.shape[1] == best_k
    capsys.readouterr()
    run_experiment(config, str(run_dir))
    assert capsys.readouterr().out.count("done before:") == len(STAGES) + 1
