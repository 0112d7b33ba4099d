"""Fault injection into training on Ray (worker loss in DNN and NMF training, NaN training data): each
test names the fault, injects it into real components (local Ray, a moto S3
server, real files) and checks the promised outcome. The table of faults is docs/faults.md.

Bad-input and numerics cases already covered elsewhere (test_audio_mixing, test_corpora, test_config,
test_dnn, test_bss_engine, test_inference, test_spectral_masks, test_prepare) are not repeated here.
"""

from __future__ import annotations

import json
import math
import os
import signal
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from karaoke.config import config_from_dict
from tests.conftest import small_config_dict
from tests.processes import descendants, wait_for

TRAIN_WORKER = "ray::RayTrainWorker"


# --- helpers: Ray Train's record of a run's checkpoints ---------------------------------------


def _registered_checkpoint(run: Path) -> str | None:
    """Folder name of the latest checkpoint Ray Train's controller has registered for a run.

    A worker writes its checkpoint folder before the controller registers the report; a group
    restarted in between resumes from the previous registered one. The controller's snapshot (Ray's
    own file in the run folder) is the record of what a restart will use.
    """
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught while being written
        return None
    return (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")


def _kill_one_worker_and_see_restart(run: Path, job: Future) -> str:
    """Once a checkpoint of `run` (Ray Train's run folder) is registered, SIGKILL one Ray Train
    worker, then wait until a replacement worker exists (the group restarted). Returns the folder
    name of the checkpoint that was registered at the kill."""
    wait_for(lambda: _registered_checkpoint(run) is not None, job, "registered checkpoint")
    registered = _registered_checkpoint(run)
    workers = descendants(TRAIN_WORKER)
    assert workers, "no Ray Train worker process found"
    os.kill(min(workers), signal.SIGKILL)
    wait_for(lambda: bool(descendants(TRAIN_WORKER) - workers), job, "restarted worker group")
    return registered


# --- worker loss in DNN training ----------------------------------------------------------------


def _dnn_config(synth_root: Path, max_failures: int = 1, **train):
    # Windows every 2 frames and a 256-unit layer: seconds per epoch, so a kill lands mid-run.
    return config_from_dict(
        small_config_dict(
            str(synth_root),
            corpus={"valid_fraction": 0.3},
            windows={"train_hop": 2},
            dnn={"hidden_sizes": [256]},
            train={"epochs": 3, "optimizer": "adam", "learning_rate": 1e-3, **train},
            # every epoch's checkpoint kept: the test verifies each one
            resources={"dnn": {"num_workers": 2, "max_failures": max_failures, "keep_checkpoints": 3}},
        )
    )


@pytest.fixture(scope="module")
def dnn_dataset(ray_session, synth_root, tmp_path_factory) -> str:
    from pipelines.prepare import prepare_dataset

    path = str(tmp_path_factory.mktemp("faults") / "dnn-dataset")
    prepare_dataset(_dnn_config(synth_root), path)
    return path


@pytest.mark.slow
def test_dnn_worker_killed_mid_run_restarts_from_last_checkpoint(dnn_dataset, synth_root, tmp_path):
    """Fault: SIGKILL of one of two Ray Train workers after epoch 1's checkpoint, during epoch 2.
    Expected: the group restarts from the last checkpoint and finishes; epochs 1..3 each have one
    verified checkpoint; the history has no gap or repeat; every metric is finite."""
    from karaoke.models.dnn import load_dnn
    from pipelines.train_dnn import train_dnn

    config = _dnn_config(synth_root)
    run = tmp_path / "run"
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(train_dnn, config, dnn_dataset, str(run))
        resumed = _kill_one_worker_and_see_restart(run, job)
        assert not (run / "epoch_0003").exists(), "the kill landed after the last epoch"
        resumed_card = (run / resumed / "checkpoint.json").read_text()
        result = job.result(timeout=600)

    assert Path(result.checkpoint_path).name == "epoch_0003" and result.metrics["epoch"] == 3
    assert sorted(p.name for p in run.glob("epoch_*")) == ["epoch_0001", "epoch_0002", "epoch_0003"]
    previous = None
    for epoch in (1, 2, 3):
        _, _, card = load_dnn(run / f"epoch_{epoch:04d}", config)  # sha-256 of the weights verified
        assert card["epoch"] == epoch and [m["epoch"] for m in card["history"]] == list(range(1, epoch + 1))
        assert all(math.isfinite(v) for m in card["history"] for v in m.values())
        if previous is not None:
            assert card["history"][:-1] == previous["history"]  # earlier epochs unchanged by the restart
        previous = card
    assert previous["metrics"] == previous["history"][-1] == {k: result.metrics[k] for k in previous["metrics"]}
    # the restart resumed from the registered checkpoint instead of redoing it, and Ray Train's record
    # holds one checkpoint per epoch
    assert (run / resumed / "checkpoint.json").read_text() == resumed_card
    snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    registered = [result["checkpoint_dir_name"] for result in snapshot["checkpoint_results"]]
    assert registered == ["epoch_0001", "epoch_0002", "epoch_0003"]


# --- worker loss in NMF training ----------------------------------------------------------------


@pytest.mark.slow
def test_nmf_worker_killed_mid_fit_restarts_from_last_checkpoint(dnn_dataset, synth_root, tmp_path):
    """Fault: SIGKILL of one of two NMF workers after the first checkpoint (iteration 4 of 24).
    Expected: the group restarts from the latest checkpoint of W and each worker's H and finishes;
    the objective has each iteration 1..24 exactly once, all finite, and ends below where it started;
    the final bases and the checkpoints Ray Train kept load with their digests verified, and the
    bases are those of an uninterrupted fit (to float rounding)."""
    from karaoke.models.nmf import load_bases
    from pipelines.train_nmf import train_nmf

    config = config_from_dict(
        small_config_dict(
            str(synth_root),
            corpus={"valid_fraction": 0.3},
            windows={"train_hop": 2},
            nmf={"n_components": 8, "train_iterations": 24, "checkpoint_every": 4},
            resources={"nmf": {"num_workers": 2, "max_failures": 1}},
        )
    )
    run = tmp_path / "run"
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(train_nmf, config, dnn_dataset, str(run))
        resumed = _kill_one_worker_and_see_restart(run / "ray" / "nmf", job)
        assert not (run / "bases").exists(), "the kill landed after the fit"
        resumed_card = json.loads((run / "ray" / "nmf" / resumed / "checkpoint.json").read_text())
        bases = job.result(timeout=600)

    _, _, card = load_bases(bases, config)
    assert card["iteration"] == 24
    objective = json.loads((run / "objective.json").read_text())
    assert objective == card["objective"] and [row["iteration"] for row in objective] == list(range(1, 25))
    kl = np.array([[row["kl_vocals"], row["kl_accompaniment"]] for row in objective])
    assert np.isfinite(kl).all() and (kl[-1] < kl[0]).all()
    # the restart resumed from the registered checkpoint: its iterations are the run's first ones
    assert 0 < resumed_card["iteration"] < 24 and objective[: resumed_card["iteration"]] == resumed_card["objective"]
    snapshot = json.loads((run / "ray" / "nmf" / "checkpoint_manager_snapshot.json").read_text())
    for kept in snapshot["checkpoint_results"]:
        folder = run / "ray" / "nmf" / kept["checkpoint_dir_name"]
        load_bases(folder, config)  # digest verified
        assert {p.name for p in folder.glob("activations_rank*")} == {"activations_rank0.safetensors", "activations_rank1.safetensors"}

    uninterrupted = train_nmf(config, dnn_dataset, str(tmp_path / "uninterrupted"))
    W_v, W_nv, reference = load_bases(uninterrupted, config)
    W_v_resumed, W_nv_resumed, _ = load_bases(bases, config)
    np.testing.assert_allclose(W_v_resumed.numpy(), W_v.numpy(), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(W_nv_resumed.numpy(), W_nv.numpy(), rtol=1e-4, atol=1e-9)
    kl_reference = np.array([[row["kl_vocals"], row["kl_accompaniment"]] for row in reference["objective"]])
    np.testing.assert_allclose(kl, kl_reference, rtol=1e-5)


@pytest.mark.slow
def test_nan_in_the_training_data_stops_the_ray_job_without_a_checkpoint(dnn_dataset, synth_root, tmp_path):
    """Fault: one training window's mixture holds NaN (a corrupted shard). Expected: the Ray job
    stops with `TrainingError` naming the non-finite loss, and no checkpoint is written."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from karaoke.dataset import load_manifest
    from karaoke.models.dnn import TrainingError
    from pipelines.train_dnn import train_dnn

    dataset = tmp_path / "dataset"
    shutil.copytree(dnn_dataset, dataset)
    shard = dataset / load_manifest(str(dataset))["splits"]["train"]["window_files"][0]
    table = pq.read_table(shard)
    mixture = table.column("mixture").combine_chunks()
    values = np.asarray(mixture.storage.flatten()).copy()
    values[: values.size // len(mixture)] = np.nan  # the whole first window
    storage = pa.FixedSizeListArray.from_arrays(pa.array(values), values.size // len(mixture))
    table = table.set_column(table.schema.get_field_index("mixture"), table.schema.field("mixture"),
                             pa.ExtensionArray.from_storage(mixture.type, storage))
    pq.write_table(table, shard)

    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="loss"):
        train_dnn(_dnn_config(synth_root, epochs=1, max_failures=0), str(dataset), str(run))
    assert not list(run.glob("epoch_*"))
