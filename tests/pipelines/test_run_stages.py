"""The bookkeeping of `karaoke run` without Ray: the guard that refuses to resume training of another model."""

from __future__ import annotations

import pytest

from karaoke.config import config_from_dict, save_config
from karaoke.errors import CheckpointError
from pipelines.run_stages import Run, guard
from tests.conftest import small_config_dict


def _run(tmp_path, **sections) -> Run:
    return Run(str(tmp_path), config_from_dict(small_config_dict(str(tmp_path / "corpus"), **sections)))


def test_guard_refuses_other_weights_naming_each_key(tmp_path):
    trained = _run(tmp_path)
    save_config(trained.config, tmp_path / "dnn" / "config.yaml")
    save_config(trained.config, tmp_path / "nmf" / "config.yaml")
    guard(trained, str(tmp_path / "dnn"), "dnn")  # the same model: resumable
    guard(trained, str(tmp_path / "empty"), "dnn")  # nothing trained there yet

    other = _run(tmp_path, train={"learning_rate": 0.01, "seed": 3})
    with pytest.raises(CheckpointError, match=r"train.learning_rate: 0.1 there, 0.01 here, train.seed: 0 there, 3 here\)"):
        guard(other, str(tmp_path / "dnn"), "dnn")
    with pytest.raises(CheckpointError, match=r"nmf.n_components: 8 there, 9 here"):
        guard(_run(tmp_path, nmf={"n_components": 9}), str(tmp_path / "nmf"), "nmf")


def test_guard_lets_training_grow_but_not_shrink_and_ignores_resources(tmp_path):
    trained = _run(tmp_path)
    save_config(trained.config, tmp_path / "dnn" / "config.yaml")
    save_config(trained.config, tmp_path / "nmf" / "config.yaml")
    guard(_run(tmp_path, train={"epochs": 5}), str(tmp_path / "dnn"), "dnn")  # more of the same training
    guard(_run(tmp_path, nmf={"train_iterations": 20, "test_iterations": 3}), str(tmp_path / "nmf"), "nmf")
    guard(_run(tmp_path, resources={"dnn": {"num_workers": 2}}), str(tmp_path / "dnn"), "dnn")
    with pytest.raises(CheckpointError, match=r"train.epochs: 2 there, 1 here"):
        guard(_run(tmp_path, train={"epochs": 1}), str(tmp_path / "dnn"), "dnn")
    # Under a decaying rate the earlier epochs depend on the number of epochs: not the same training.
    cosine = _run(tmp_path, train={"lr_schedule": "cosine"})
    save_config(cosine.config, tmp_path / "dnn" / "config.yaml")
    with pytest.raises(CheckpointError, match=r"train.epochs: 2 there, 5 here"):
        guard(_run(tmp_path, train={"lr_schedule": "cosine", "epochs": 5}), str(tmp_path / "dnn"), "dnn")
