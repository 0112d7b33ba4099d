"""Ray Train job: a 2-worker CPU run checkpoints every epoch, resumes, and its checkpoint separates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import small_config_dict

from karaoke.config import config_from_dict
from karaoke.errors import CheckpointError


def _config(synth_root: Path, keep_checkpoints: int = 2, num_workers: int = 2, **train):
    # one of the four synthetic training songs is held out for the per-epoch validation metrics
    return config_from_dict(
        small_config_dict(
            str(synth_root),
            corpus={"valid_fraction": 0.3},
            windows={"train_hop": 10},
            train={"epochs": 1, "optimizer": "adam", "learning_rate": 1e-3, **train},
            resources={"dnn": {"num_workers": num_workers, "keep_checkpoints": keep_checkpoints}},
        )
    )


@pytest.fixture(scope="module")
def dataset(ray_session, synth_root, tmp_path_factory):
    from karaoke.dataset import load_manifest
    from pipelines.prepare import prepare_dataset

    path = str(tmp_path_factory.mktemp("prepared") / "dataset")
    prepare_dataset(_config(synth_root), path)
    splits = load_manifest(path)["splits"]
    assert splits["train"]["windows"] > 0 and splits["valid"]["windows"] > 0
    return path


def test_dataset_prepared_with_another_stft_is_refused(dataset, synth_root, tmp_path):
    from karaoke.dataset import DatasetError
    from pipelines.train_dnn import train_dnn

    other = config_from_dict(small_config_dict(str(synth_root), stft={"n_fft": 256, "hop_length": 64}))
    with pytest.raises(DatasetError, match="prepare the dataset again"):
        train_dnn(other, dataset, str(tmp_path / "run"))


@pytest.mark.slow
def test_two_workers_checkpoint_resume_and_separate(dataset, synth_root, tmp_path):
    from karaoke.checkpoint import latest_checkpoint
    from karaoke.dataset import read_songs
    from karaoke.models.dnn import load_dnn
    from karaoke.separate import separate_audio
    from pipelines.train_dnn import train_dnn

    run_dir = str(tmp_path / "run")
    first = train_dnn(_config(synth_root), dataset, run_dir)
    assert Path(first.checkpoint_path).name == "epoch_0001" == Path(latest_checkpoint(run_dir)).name
    assert first.metrics["epoch"] == 1 and 0.0 < first.metrics["valid_accuracy"] <= 1.0
    assert (tmp_path / "run" / "config.yaml").is_file()

    with pytest.raises(CheckpointError, match="--resume"):
        train_dnn(_config(synth_root), dataset, run_dir)

    # resuming continues the epoch count up to the new train.epochs
    second = train_dnn(_config(synth_root, epochs=2), dataset, run_dir, resume=True)
    assert Path(second.checkpoint_path).name == "epoch_0002"
    card = json.loads((Path(second.checkpoint_path) / "checkpoint.json").read_text())
    assert card["epoch"] == 2 and [m["epoch"] for m in card["history"]] == [1, 2]
    assert card["history"][0] == json.loads((Path(first.checkpoint_path) / "checkpoint.json").read_text())["metrics"]

    # The last epoch's weights cut short after its card was written: a rerun resumes from the newest
    # checkpoint that verifies and trains the lost epoch again.
    weights = Path(second.checkpoint_path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert Path(latest_checkpoint(run_dir)).name == "epoch_0001"
    again = train_dnn(_config(synth_root, epochs=2), dataset, run_dir, resume=True)
    card = json.loads((Path(again.checkpoint_path) / "checkpoint.json").read_text())
    assert Path(again.checkpoint_path).name == "epoch_0002" and [m["epoch"] for m in card["history"]] == [1, 2]
    second = again

    model, config, _ = load_dnn(second.checkpoint_path, _config(synth_root))
    song = read_songs(dataset, "test")[0]
    result = separate_audio(model, song.mixture, config, alpha=0.5)
    assert result.vocals.shape == result.accompaniment.shape == song.mixture.shape
    assert np.isfinite(result.vocals).all() and np.abs(result.accompaniment).max() > 0

    # `karaoke separate` given the run directory uses its last epoch
    import soundfile as sf
    from click.testing import CliRunner

    from karaoke_cli.main import main

    sf.write(tmp_path / "song.wav", song.mixture, song.sample_rate, subtype="FLOAT")
    out = tmp_path / "separated"
    cli = CliRunner().invoke(main, ["separate", str(tmp_path / "song.wav"), "--model", run_dir, "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    vocals, _ = sf.read(out / f"{config.name}-{Path(second.checkpoint_path).name}" / "song" / "vocals.wav", dtype="float32")
    np.testing.assert_allclose(vocals, result.vocals, atol=1e-4)


def test_run_directory_on_s3_finds_the_last_complete_checkpoint(s3_endpoint, small_config, tmp_path):
    import fsspec

    from karaoke.checkpoint import latest_checkpoint
    from karaoke.config import save_config
    from karaoke.models.dnn import build_model, save_dnn

    run_dir = "s3://test-bucket/runs/dnn"
    assert latest_checkpoint(run_dir) is None
    save_config(small_config, f"{run_dir}/config.yaml")
    fs = fsspec.filesystem("s3")
    assert fs.exists("test-bucket/runs/dnn/config.yaml")
    model = build_model(small_config)
    for epoch in (1, 2):
        local = save_dnn(tmp_path / f"epoch_{epoch:04d}", model, small_config, epoch, {"train_loss": 0.1})
        fs.put(str(local), f"test-bucket/runs/dnn/epoch_{epoch:04d}", recursive=True)
    # an epoch whose card was never written (killed while saving) is not a checkpoint
    fs.pipe("test-bucket/runs/dnn/epoch_0003/model.safetensors", b"partial")
    assert latest_checkpoint(run_dir) == "s3://test-bucket/runs/dnn/epoch_0002"


@pytest.mark.slow
def test_checkpoints_kept_are_the_last_two_and_the_best_and_a_resume_is_exact(dataset, synth_root, tmp_path, capsys):
    """4 epochs keep epochs {3, 4} and the best by validation loss; one line per epoch reaches the
    console and TensorBoard; resuming to 5 epochs from what is kept gives the weights of a straight
    5-epoch run (one worker: two split the windows between them in an order set by timing)."""
    from safetensors.numpy import load_file

    from karaoke.checkpoint import retained_epochs
    from pipelines.train_dnn import train_dnn

    run = tmp_path / "run"
    first = train_dnn(_config(synth_root, epochs=4, num_workers=1), dataset, str(run))
    card = json.loads((Path(first.checkpoint_path) / "checkpoint.json").read_text())
    kept = retained_epochs(card["history"], 2)
    assert {3, 4} <= kept and len(kept) <= 3
    assert sorted(p.name for p in run.glob("epoch_*")) == [f"epoch_{e:04d}" for e in sorted(kept)]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all("valid loss" in line and "windows/s" in line and "ETA" in line for line in lines)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    resumed = train_dnn(_config(synth_root, epochs=5, num_workers=1), dataset, str(run), resume=True)
    straight = train_dnn(_config(synth_root, epochs=5, num_workers=1), dataset, str(tmp_path / "straight"))
    assert Path(resumed.checkpoint_path).name == Path(straight.checkpoint_path).name == "epoch_0005"
    a = load_file(str(Path(resumed.checkpoint_path) / "model.safetensors"))
    b = load_file(str(Path(straight.checkpoint_path) / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
