"""Distributed NMF on Ray Train (pipelines/train_nmf.py): 1 worker = 2 workers = single process,
a monotone objective, resume from the run's checkpoint, and refusals of ambiguous run folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from karaoke.config import config_from_dict, save_config
from karaoke.errors import KaraokeError
from karaoke.models.nmf import fit_nmf, load_bases, window_keys
from tests.conftest import small_config_dict

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

NMF = {"n_components": 6, "train_iterations": 6, "checkpoint_every": 3, "seed": 1}


def nmf_config(synth_root, num_workers=1, **nmf):
    return config_from_dict(small_config_dict(str(synth_root), windows={"train_hop": 15}, nmf={**NMF, **nmf},
                                              resources={"nmf": {"num_workers": num_workers}}))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, synth_root):
    from pipelines.prepare import prepare_dataset

    path = str(tmp_path_factory.mktemp("nmf-data") / "synth")
    prepare_dataset(nmf_config(synth_root), path)
    return path


@pytest.fixture(scope="module")
def one_worker_run(tmp_path_factory, dataset, synth_root):
    from pipelines.train_nmf import train_nmf

    run_dir = tmp_path_factory.mktemp("nmf-1") / "run"
    bases = train_nmf(nmf_config(synth_root, num_workers=1), dataset, str(run_dir))
    return run_dir, bases


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_one_worker_run_matches_single_process_fit(one_worker_run, dataset, synth_root):
    from karaoke.dataset import read_windows

    run_dir, bases = one_worker_run
    config = nmf_config(synth_root)
    W_v, W_nv, card = load_bases(bases, config)
    assert card["iteration"] == 6 and (run_dir / "config.yaml").is_file()
    objective = json.loads((run_dir / "objective.json").read_text())
    kl = np.array([[row["kl_vocals"], row["kl_accompaniment"]] for row in objective])
    assert [row["iteration"] for row in objective] == list(range(1, 7))
    assert np.all(np.diff(kl, axis=0) <= 1e-6 * kl[:-1]) and np.all(kl[-1] < kl[0])
    # The same fit without Ray, on the rows as stored (float16 windows).
    rows = read_windows(dataset, "train", ["song_id", "start_frame", "vocals", "accompaniment"])
    n = len(rows["start_frame"])
    V = torch.stack([torch.from_numpy(rows[s].reshape(n, -1).astype(np.float32)).T for s in ("vocals", "accompaniment")])
    W, _, expected = fit_nmf(V.contiguous(), window_keys(rows["song_id"], rows["start_frame"]), 6, 6, seed=1)
    assert relative_difference(W_v, W[0]) < 1e-4 and relative_difference(W_nv, W[1]) < 1e-4
    np.testing.assert_allclose(kl, np.stack(expected), rtol=1e-4)


def test_two_workers_give_the_same_bases(one_worker_run, dataset, synth_root, tmp_path):
    from click.testing import CliRunner

    from karaoke_cli.main import main

    config_path = tmp_path / "nmf.yaml"
    save_config(nmf_config(synth_root), config_path)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["train", "nmf", "--config", str(config_path), "--set", "resources.nmf.num_workers=2", "--data", dataset, "--out", str(run_dir)],
    )
    assert result.exit_code == 0, result.output
    config = nmf_config(synth_root)
    one_v, one_nv, _ = load_bases(one_worker_run[1], config)
    two_v, two_nv, card = load_bases(run_dir / "bases", config)
    assert card["config"]["resources"]["nmf"]["num_workers"] == 2
    assert relative_difference(two_v, one_v) < 1e-4 and relative_difference(two_nv, one_nv) < 1e-4
    one_kl = json.loads((one_worker_run[0] / "objective.json").read_text())
    two_kl = json.loads((run_dir / "objective.json").read_text())
    np.testing.assert_allclose(
        [row["kl_vocals"] for row in two_kl], [row["kl_vocals"] for row in one_kl], rtol=1e-4
    )


def test_resume_continues_from_the_last_checkpoint(one_worker_run, dataset, synth_root):
    from pipelines.train_nmf import train_nmf

    run_dir, _ = one_worker_run
    before = json.loads((run_dir / "objective.json").read_text())
    with pytest.raises(KaraokeError, match="--resume"):
        train_nmf(nmf_config(synth_root), dataset, str(run_dir))
    bases = train_nmf(nmf_config(synth_root, train_iterations=9), dataset, str(run_dir), resume=True)
    _, _, card = load_bases(bases, nmf_config(synth_root))
    after = json.loads((run_dir / "objective.json").read_text())
    assert card["iteration"] == 9 and len(after) == 9
    assert after[:6] == before
    # H restarts from its seed on resume; W keeps its fit, so the objective stays below the start's.
    assert after[6]["kl_vocals"] < after[0]["kl_vocals"]
    assert after[8]["kl_vocals"] <= after[6]["kl_vocals"]


def test_resume_without_a_run_is_refused(dataset, synth_root, tmp_path):
    from pipelines.train_nmf import train_nmf

    with pytest.raises(KaraokeError, match="no NMF run to resume"):
        train_nmf(nmf_config(synth_root), dataset, str(tmp_path / "empty"), resume=True)


def _shard(rows):
    class Shard:  # what a Ray Train worker iterates: numpy batches of the stored rows
        def iter_batches(self, batch_size, batch_format):
            for start in range(0, len(rows["start_frame"]), batch_size):
                yield {name: values[start : start + batch_size] for name, values in rows.items()}

    return Shard()


def test_train_hop_keeps_only_the_windows_at_its_multiples(dataset):
    from karaoke.config import NmfConfig
    from karaoke.dataset import read_windows
    from pipelines.train_nmf import COLUMNS, _load_shard

    rows = read_windows(dataset, "train", COLUMNS)
    n_inputs = rows["vocals"][0].size
    V_all, _ = _load_shard(_shard(rows), n_inputs, 0, 1, "cpu", NmfConfig())
    V, keys = _load_shard(_shard(rows), n_inputs, 0, 1, "cpu", NmfConfig(train_hop=30))
    kept = rows["start_frame"] % 30 == 0
    assert 0 < kept.sum() < len(kept) and V.shape[-1] == kept.sum() and V_all.shape[-1] == len(kept)
    np.testing.assert_array_equal(keys, window_keys(rows["song_id"], rows["start_frame"])[kept])
    np.testing.assert_array_equal(V.numpy(), V_all.numpy()[..., kept])


def test_train_remixes_off_keeps_only_the_songs_own_windows(dataset):
    from karaoke.config import NmfConfig
    from karaoke.dataset import read_windows
    from pipelines.train_nmf import COLUMNS, _load_shard

    rows = read_windows(dataset, "train", COLUMNS)
    assert (rows["remix"] == 0).all()  # this dataset has no remixes: mark every third window as one
    rows["remix"] = (np.arange(len(rows["remix"])) % 3 == 1).astype(np.int64)
    n_inputs = rows["vocals"][0].size
    V_all, _ = _load_shard(_shard(rows), n_inputs, 0, 1, "cpu", NmfConfig())
    V, _ = _load_shard(_shard(rows), n_inputs, 0, 1, "cpu", NmfConfig(train_remixes=False))
    own = rows["remix"] == 0
    assert V_all.shape[-1] == len(own)
    np.testing.assert_array_equal(V.numpy(), V_all.numpy()[..., own])


def test_train_hop_must_be_a_multiple_of_the_window_hop(synth_root):
    with pytest.raises(KaraokeError, match="nmf.train_hop .* multiple of windows.train_hop"):
        nmf_config(synth_root, train_hop=20)
    assert nmf_config(synth_root, train_hop=30).nmf.train_hop == 30


def test_checkpointed_activations_follow_their_windows_not_their_order(tmp_path):
    """A resumed worker gets back its H column by column, whatever order the windows are read in;
    H from other windows (another number of workers) is not used."""
    import torch

    from pipelines.train_nmf import load_activations, save_activations

    keys = np.array([11, 5, 42, 7], dtype=np.uint64)
    H = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    save_activations(tmp_path, 1, H, keys)
    same, problem = load_activations(tmp_path, 1, keys)
    assert problem is None and torch.equal(same, H)
    shuffled = keys[[2, 0, 3, 1]]
    moved, problem = load_activations(tmp_path, 1, shuffled)
    assert problem is None and torch.equal(moved, H[:, :, [2, 0, 3, 1]])
    assert load_activations(tmp_path, 1, keys[:3])[1] == "activations_rank1.safetensors holds other windows"
    assert load_activations(tmp_path, 0, keys)[1] == "no activations_rank0.safetensors"
    (tmp_path / "activations_rank1.safetensors").write_bytes(b"partial")
    assert load_activations(tmp_path, 1, keys)[1].startswith("unreadable activations_rank1.safetensors")
