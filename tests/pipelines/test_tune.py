"""pipelines.tune: Ray Tune trials (DNN in a TorchTrainer, NMF) scored over the alpha grid on the
validation songs, with per-alpha results, TensorBoard logs and a best checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from karaoke.config import config_from_dict, load_config, save_config
from karaoke.errors import ConfigError, KaraokeError
from tests.conftest import small_config_dict

ALPHAS = [0.3, 0.5, 0.7]


def tune_config(synth_root: Path, **tune):
    # one of the four synthetic training songs is held out: the validation song the trials are scored on
    return config_from_dict(
        small_config_dict(
            str(synth_root),
            corpus={"valid_fraction": 0.3},
            windows={"train_hop": 10},
            train={"epochs": 2, "optimizer": "adam", "learning_rate": 1e-3},
            nmf={"n_components": 4, "train_iterations": 4, "test_iterations": 4},
            evaluation={"alphas": ALPHAS, "alpha": 0.5},
            tune={"num_samples": 1, **tune},
        )
    )


@pytest.fixture(scope="module")
def dataset(ray_session, synth_root, tmp_path_factory):
    from karaoke.dataset import load_manifest
    from pipelines.prepare import prepare_dataset

    path = str(tmp_path_factory.mktemp("tune-data") / "dataset")
    prepare_dataset(tune_config(synth_root), path)
    assert load_manifest(path)["splits"]["valid"]["windows"] > 0
    return path


@pytest.mark.parametrize(
    "space, message",
    [
        ({"train.lr": [0.1]}, "unknown key 'train.lr'"),
        ({"stft.n_fft": [512]}, "unknown key 'stft.n_fft'"),
        ({"nmf.n_components": [10]}, "unknown key 'nmf.n_components'"),  # not a DNN key
        ({"train.learning_rate": [0.1, -1]}, "tune.search_space.train.learning_rate: choice -1"),
        ({"dnn.hidden_sizes": [[64], [0]]}, "tune.search_space.dnn.hidden_sizes: choice [0]"),
        ({"train.epochs": []}, "at least one choice"),
    ],
)
def test_bad_search_space_is_a_config_error_naming_the_key(space, message):
    with pytest.raises(ConfigError, match="bad.yaml") as info:
        config_from_dict({"tune": {"num_samples": 2, "search_space": space}}, source="bad.yaml")
    assert message in str(info.value)


def test_no_samples_means_no_tune(synth_root, tmp_path):
    from pipelines.tune import tune_experiment

    config = tune_config(synth_root, num_samples=0)
    with pytest.raises(KaraokeError, match="tune.num_samples is 0"):
        tune_experiment(config, str(tmp_path / "missing-dataset"), str(tmp_path / "tune"))


def test_trial_config_applies_dotted_values(synth_root):
    from pipelines.tune import trial_config

    config = trial_config(tune_config(synth_root), {"dnn.hidden_sizes": [8, 4], "train.learning_rate": 0.5})
    assert config.dnn.hidden_sizes == (8, 4) and config.train.learning_rate == 0.5
    assert config.train.epochs == 2


@pytest.mark.slow
def test_two_dnn_trials_give_per_alpha_results_logs_and_the_best_checkpoint(dataset, synth_root, tmp_path):
    from click.testing import CliRunner

    from karaoke.models.dnn import load_dnn
    from karaoke_cli.main import main
    from pipelines.tune import tune_experiment

    # ASHA stays on, with no rung before the last epoch: the result checks (scheduler metric in every
    # report) run, and both trials get scored.
    config = tune_config(
        synth_root, search_space={"dnn.hidden_sizes": [[8], [16]], "train.learning_rate": [1e-3]}, grace_period=2
    )
    out = tmp_path / "tune"
    outcome = tune_experiment(config, dataset, str(out))

    rows = pq.read_table(outcome.results).to_pylist()
    assert sorted((json.loads(r["dnn.hidden_sizes"]), r["alpha"]) for r in rows) == sorted(
        (w, a) for w in ([8], [16]) for a in ALPHAS
    )
    assert all(r["n_songs"] == 1 and r["train.learning_rate"] == 1e-3 for r in rows)
    assert (out / "results.csv").read_text().count("\n") == len(rows) + 1

    # TensorBoard event files, one set per trial, in Tune's storage
    events = list((out / "ray").rglob("events.out.tfevents*"))
    assert len({path.parent for path in events}) == 2

    # best/: the criterion is the max over the trials of the mean SDR at alpha 0.5
    criterion = json.loads((out / "best" / "criterion.json").read_text())
    at_half = {r["trial_id"]: r["mean_sdr"] for r in rows if r["alpha"] == 0.5}
    assert [t["status"] for t in criterion["trials"]] == ["scored", "scored"]
    assert criterion["criterion"] == "mean_sdr" and criterion["value"] == pytest.approx(max(at_half.values()))
    assert at_half[criterion["trial_id"]] == max(at_half.values())
    assert {r["trial_id"] for r in rows if r["best"]} == {criterion["trial_id"]}
    model, _, card = load_dnn(outcome.best_checkpoint, outcome.best_config)
    assert card["epoch"] == 2 and model.net[0].out_features == criterion["params"]["dnn.hidden_sizes"][0]
    best_config = load_config(out / "best" / "config.yaml")
    assert best_config == outcome.best_config and best_config.tune.num_samples == 0
    assert list(best_config.dnn.hidden_sizes) == criterion["params"]["dnn.hidden_sizes"]

    # a finished tune is not overwritten (through the CLI: one-line error, exit status 2)
    config_path = tmp_path / "config.yaml"
    save_config(config, config_path)
    result = CliRunner().invoke(main, ["tune", "--config", str(config_path), "--data", dataset, "--out", str(out)])
    assert result.exit_code == 2 and "holds a finished tune" in result.output


@pytest.mark.slow
def test_nmf_trial_scores_and_keeps_its_bases(dataset, synth_root, tmp_path):
    from karaoke.models.nmf import load_bases
    from pipelines.tune import tune_experiment

    config = tune_config(synth_root, model="nmf", search_space={"nmf.n_components": [3]}, criterion="vocals_sdr")
    outcome = tune_experiment(config, dataset, str(tmp_path / "tune"))
    W_v, W_nv, _ = load_bases(outcome.best_checkpoint, outcome.best_config)
    assert W_v.shape[1] == W_nv.shape[1] == 3 == outcome.best_config.nmf.n_components
    rows = pq.read_table(outcome.results).to_pylist()
    assert [r["alpha"] for r in rows] == ALPHAS and all(r["nmf.n_components"] == 3 for r in rows)
    criterion = json.loads((tmp_path / "tune" / "best" / "criterion.json").read_text())
    assert criterion["value"] == pytest.approx(next(r["vocals_sdr"] for r in rows if r["alpha"] == 0.5))


@pytest.mark.slow
def test_asha_stops_a_trailing_trial_before_it_is_scored(ray_session, dataset, synth_root, tmp_path):
    from pipelines.tune import tune_experiment

    # Grid order, one trial at a time: the working learning rate sets the bar at the epoch-1 rung,
    # where the near-zero one, its validation loss still the untrained network's, trails and stops.
    config = tune_config(synth_root, search_space={"train.learning_rate": [1e-2, 1e-9]}, grace_period=1)
    groups_before = set(ray_session.util.placement_group_table())
    outcome = tune_experiment(config, dataset, str(tmp_path / "tune"))
    criterion = json.loads((tmp_path / "tune" / "best" / "criterion.json").read_text())
    status = {t["params"]["train.learning_rate"]: t["status"] for t in criterion["trials"]}
    assert status == {1e-2: "scored", 1e-9: "stopped"}
    assert outcome.best_config.train.learning_rate == 1e-2
    assert {r["train.learning_rate"] for r in pq.read_table(outcome.results).to_pylist()} == {1e-2}
    # the stopped trial reported its first epoch only
    progress = {p.parent.name: p.read_text().strip().count("\n") for p in (tmp_path / "tune" / "ray").glob("*/progress.csv")}
    assert sorted(progress.values()) == [1, 3]
    # The stopped trial's Train worker group gave its CPUs back (Ray Train's cleaner, which watches the
    # killed controller through the state API): a reserved group would starve later trials on 2 CPUs.
    assert _groups_released(ray_session, groups_before, deadline_s=60)


def _groups_released(ray, groups_before: set, deadline_s: float) -> bool:
    """Whether every placement group created since `groups_before` is removed within the deadline
    (polled: the cleaner looks once a second)."""
    import time

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        table = ray.util.placement_group_table()
        if all(table[group]["state"] == "REMOVED" for group in set(table) - groups_before):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_asha_refuses_a_ray_without_its_state_api(dataset, synth_root, tmp_path):
    """Without a dashboard, a stopped trial's worker group would stay reserved: refused up front, naming the fix."""
    import subprocess
    import sys

    config_path = tmp_path / "tune.yaml"
    save_config(tune_config(synth_root, search_space={"train.learning_rate": [1e-2, 1e-9]}, grace_period=1), config_path)
    script = (
        "import sys, ray\n"
        "from karaoke.config import load_config\n"
        "from karaoke.errors import KaraokeError\n"
        "from pipelines.tune import tune_experiment\n"
        "ray.init(address='local', num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "try:\n"
        "    tune_experiment(load_config(sys.argv[1]), sys.argv[2], sys.argv[3])\n"
        "except KaraokeError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(config_path), dataset, str(tmp_path / "tune")],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
    )
    assert "REFUSED" in done.stdout, done.stdout + done.stderr
    assert "dashboard" in done.stdout and "tune.scheduler: none" in done.stdout
    assert not (tmp_path / "tune" / "ray").exists()  # refused before any trial started


@pytest.mark.slow
def test_tune_into_s3(dataset, synth_root, s3_endpoint, tmp_path):
    import fsspec

    from karaoke.models.dnn import load_dnn
    from karaoke.storage import local_copy
    from pipelines.tune import tune_experiment

    config = tune_config(synth_root, search_space={"dnn.hidden_sizes": [[8]]}, scheduler="none")
    outcome = tune_experiment(config, dataset, "s3://test-bucket/run/tune")
    assert outcome.best_checkpoint == "s3://test-bucket/run/tune/best/checkpoint"
    fs = fsspec.filesystem("s3")
    assert fs.glob("test-bucket/run/tune/ray/*/events.out.tfevents*")
    with fs.open("test-bucket/run/tune/results.parquet", "rb") as handle:
        assert [r["alpha"] for r in pq.read_table(handle).to_pylist()] == ALPHAS
    criterion = json.loads(fs.cat("test-bucket/run/tune/best/criterion.json"))
    assert criterion["source_checkpoint"].startswith("s3://test-bucket/run/tune/trials/")
    with local_copy(outcome.best_checkpoint) as folder:
        _, _, card = load_dnn(folder, outcome.best_config)
    assert card["epoch"] == 2


