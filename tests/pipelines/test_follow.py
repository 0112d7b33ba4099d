"""pipelines.follow: the driver's epoch lines and TensorBoard events, read from the checkpoint cards."""

from __future__ import annotations

import json
import struct

import pytest

from karaoke.checkpoint import epoch_folder
from pipelines.follow import (
    _Follower,
    dnn_steps,
    epoch_line,
    follow_training,
    nmf_line,
    nmf_steps,
)


def _metrics(epoch: int) -> dict:
    return {
        "epoch": epoch, "train_loss": 0.5 / epoch, "train_accuracy": 0.8, "valid_loss": 0.6 / epoch,
        "valid_accuracy": 0.7 + epoch / 100, "windows_per_second": 1234.4, "epoch_seconds": 3.0, "learning_rate": 1e-3,
    }


def _write_card(run, epoch: int) -> None:
    """What rank 0 leaves per epoch: a folder whose card holds the whole history."""
    folder = run / epoch_folder(epoch)
    folder.mkdir(parents=True)
    card = {"epoch": epoch, "metrics": _metrics(epoch), "history": [_metrics(e) for e in range(1, epoch + 1)]}
    (folder / "checkpoint.json").write_text(json.dumps(card))


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Scalars of the TensorBoard event files in `folder` (TFRecord framing, tensorboardX's protos)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_epoch_line_has_the_epoch_losses_accuracy_speed_and_eta():
    line = epoch_line(_metrics(3), 10, 312.0)
    assert line == (
        "epoch 3/10  train loss 0.1667  valid loss 0.2000  mask accuracy 73.0%  1234 windows/s  ETA 5m12s"
    )
    assert epoch_line({**_metrics(1), "valid_loss": None, "valid_accuracy": None}, 2, None).endswith("ETA -")


def test_one_line_per_epoch_even_when_cards_are_pruned_between_polls(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    follower = _Follower(str(run), dnn_steps, epoch_line, 4, writer=_Writer())
    _write_card(run, 1)
    follower.poll()
    _write_card(run, 2)
    _write_card(run, 3)
    (run / epoch_folder(1) / "checkpoint.json").unlink()  # pruned before the next poll
    follower.poll()
    follower.poll()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4"]
    assert follower.writer.scalars["valid_loss"] == [(e, pytest.approx(0.6 / e)) for e in (1, 2, 3)]


def test_a_resumed_run_prints_only_its_new_epochs(tmp_path, capsys):
    run = tmp_path / "run"
    _write_card(run, 1)
    _write_card(run, 2)
    follower = _Follower(str(run), dnn_steps, epoch_line, 3, writer=_Writer())
    _write_card(run, 3)
    follower.poll()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "  resuming after step 2 of 3" and [line.split()[1] for line in out[1:]] == ["3/3"]
    assert list(follower.writer.scalars["train_loss"]) == [(3, pytest.approx(0.5 / 3))]


def test_a_run_resumed_before_a_card_whose_weights_never_arrived_prints_that_epoch_again(tmp_path, capsys):
    """Epoch 2's card is there but training resumes after epoch 1 (its weights did not verify):
    the follower says so and prints epoch 2 when it is trained again."""
    run = tmp_path / "run"
    _write_card(run, 1)
    _write_card(run, 2)
    follower = _Follower(str(run), dnn_steps, epoch_line, 3, writer=_Writer(), done=1)
    follower.poll()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "  resuming after step 1 of 3" and [line.split()[1] for line in out[1:]] == ["2/3"]


def test_follow_training_writes_tensorboard_events_beside_the_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with follow_training(str(run), dnn_steps, epoch_line, 2):
        _write_card(run, 1)
        _write_card(run, 2)
    assert len(capsys.readouterr().out.splitlines()) == 2
    scalars = _scalars(run / "tensorboard")
    assert [step for step, _ in scalars["train_loss"]] == [1, 2]
    assert scalars["windows_per_second"][0][1] == pytest.approx(1234.4)


def test_nmf_lines_follow_the_checkpointed_iterations(tmp_path, capsys):
    run = tmp_path / "nmf"
    objective = [{"iteration": i, "kl_vocals": 100.0 / i, "kl_accompaniment": 200.0 / i, "seconds": 1.0} for i in range(1, 9)]
    for iteration in (4, 8):
        folder = run / f"checkpoint_{iteration}"
        folder.mkdir(parents=True)
        card = {"iteration": iteration, "objective": objective[:iteration], "config": {"nmf": {"checkpoint_every": 4}}}
        (folder / "checkpoint.json").write_text(json.dumps(card))
    follower = _Follower(str(tmp_path / "empty"), nmf_steps, nmf_line, 8, writer=_Writer())
    follower.run_dir = str(run)
    follower.poll()
    lines = capsys.readouterr().out.splitlines()
    # one line per checkpoint; every iteration in TensorBoard
    assert [line.split()[2] for line in lines] == ["4/8", "8/8"]
    assert lines[-1].startswith("  NMF iteration 8/8  KL vocals 12.5  accompaniment 25")
    assert [step for step, _ in follower.writer.scalars["kl_vocals"]] == list(range(1, 9))
    assert "shown" not in follower.writer.scalars


class _Writer:
    """A SummaryWriter stand-in that keeps the scalars."""

    def __init__(self):
        self.scalars: dict[str, list] = {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, value))

    def flush(self):
        pass
