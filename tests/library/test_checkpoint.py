"""Checkpoint retention (karaoke.checkpoint): the last K epochs and the best are kept, the rest deleted."""

from __future__ import annotations

import json

import pytest

from karaoke.checkpoint import (
    epoch_folder,
    latest_checkpoint,
    prune_checkpoints,
    retained_epochs,
)


def _history(valid_losses):
    return [{"epoch": e, "train_loss": 1.0 / e, "valid_loss": v} for e, v in enumerate(valid_losses, start=1)]


def test_retained_epochs_are_the_last_k_and_the_best_by_validation_loss():
    history = _history([0.9, 0.5, 0.3, 0.4, 0.6, 0.7])
    assert retained_epochs(history, 2) == {3, 5, 6}
    assert retained_epochs(history, 1) == {3, 6}
    assert retained_epochs(history[:3], 2) == {2, 3}
    assert retained_epochs(history, 10) == set(range(1, 7))
    assert retained_epochs([], 2) == set()


def test_without_validation_the_best_is_by_training_loss_and_ties_keep_the_earliest():
    history = [{"epoch": e, "train_loss": loss, "valid_loss": None} for e, loss in enumerate([0.5, 0.2, 0.2, 0.4], 1)]
    assert retained_epochs(history, 1) == {2, 4}


def _folders(run, epochs):
    for epoch in epochs:
        folder = run / epoch_folder(epoch)
        folder.mkdir(parents=True)
        (folder / "checkpoint.json").write_text(json.dumps({"epoch": epoch}))
    (run / "config.yaml").write_text("name: x\n")
    (run / "tensorboard").mkdir()


def test_prune_deletes_only_the_epoch_folders_not_kept(tmp_path):
    run = tmp_path / "run"
    _folders(run, range(1, 6))
    assert prune_checkpoints(run, {2, 4, 5}) == ["epoch_0001", "epoch_0003"]
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "epoch_0002", "epoch_0004", "epoch_0005", "tensorboard"]
    assert prune_checkpoints(run, {2, 4, 5}) == []


@pytest.mark.usefixtures("s3_endpoint")
def test_prune_on_s3_keeps_the_newest_checkpoint_a_resume_needs(small_config, tmp_path):
    import fsspec
    import torch

    from karaoke.models.dnn import build_model, save_dnn

    fs = fsspec.filesystem("s3")
    model = build_model(small_config)
    torch.manual_seed(0)
    for epoch in (1, 2, 3):
        local = save_dnn(tmp_path / epoch_folder(epoch), model, small_config, epoch, {"train_loss": 0.1})
        fs.put(str(local), f"test-bucket/prune/run/{epoch_folder(epoch)}", recursive=True)
    run = "s3://test-bucket/prune/run"
    assert prune_checkpoints(run, {3}) == ["epoch_0001", "epoch_0002"]
    assert latest_checkpoint(run) == f"{run}/epoch_0003"
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("test-bucket/prune/run", refresh=True)) == ["epoch_0003"]
