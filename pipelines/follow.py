"""The driver's view of a Ray Train run: one console line per finished DNN epoch or NMF
checkpoint, and TensorBoard scalars, read from the checkpoint cards the workers write.

Reading the cards (`checkpoint.json`, each with the run's whole history) rather than the workers'
output shows exactly what was saved, misses nothing when cards are pruned or a worker group
restarts, and starts where a resumed run starts. Ray's own log lines stay hidden unless the command
runs with `--verbose` (`pipelines.ray_runtime.connect`).

    with follow_training(run_dir, dnn_steps, epoch_line, total=config.train.epochs):
        trainer.fit()
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

POLL_SECONDS = 1.0
Step = dict[str, Any]


def dnn_steps(card: dict) -> list[Step]:
    """A DNN card's per-epoch metrics (`epoch`, `train_loss`, ... as `pipelines.train_dnn` reports)."""
    return [{"step": row["epoch"], **row} for row in card.get("history", [])]


def nmf_steps(card: dict) -> list[Step]:
    """An NMF card's iterations (the objective's rows up to the card's iteration); those a
    checkpoint was made at are `shown` on the console, every one goes to TensorBoard."""
    every = card.get("config", {}).get("nmf", {}).get("checkpoint_every", 1)
    last = card.get("iteration", 0)
    rows = [row for row in card.get("objective", []) if row["iteration"] <= last]
    return [
        {"step": row["iteration"], **row, "shown": row["iteration"] % every == 0 or row["iteration"] == last}
        for row in rows
    ]


def epoch_line(step: Step, total: int, eta_seconds: float | None) -> str:
    """'epoch 3/10  train loss 0.1234  valid loss 0.1300  mask accuracy 91.2%  1234 windows/s  ETA 5m12s'."""
    parts = [f"epoch {step['epoch']}/{total}", f"train loss {step['train_loss']:.4f}"]
    if step.get("valid_loss") is not None:
        parts.append(f"valid loss {step['valid_loss']:.4f}")
    accuracy = step.get("valid_accuracy", step.get("train_accuracy"))
    if accuracy is not None:
        parts.append(f"mask accuracy {100 * accuracy:.1f}%")
    parts.append(f"{step['windows_per_second']:.0f} windows/s")
    return "  ".join([*parts, f"ETA {_duration(eta_seconds)}"])


def nmf_line(step: Step, total: int, eta_seconds: float | None) -> str:
    """'NMF iteration 40/200  KL vocals 1.23e+04  accompaniment 2.34e+04  ETA 5m12s'."""
    return (
        f"NMF iteration {step['iteration']}/{total}  KL vocals {step['kl_vocals']:.4g}  "
        f"accompaniment {step['kl_accompaniment']:.4g}  ETA {_duration(eta_seconds)}"
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def newest_card(run_dir: str, steps: Callable[[dict], list[Step]]) -> dict | None:
    """The card of the newest checkpoint (most `steps`) under a training run folder (local or URL)."""
    import json

    from karaoke.checkpoint import CARD
    from karaoke.storage import open_fs

    fs, root = open_fs(run_dir)
    cards = []
    for path in fs.glob(f"{root}/*/{CARD}"):
        try:
            with fs.open(path, "rb") as handle:
                cards.append(json.load(handle))
        except (OSError, ValueError):
            continue  # being written or pruned: the next poll sees it settled
    return max(cards, key=lambda card: len(steps(card)), default=None)


class _Follower:
    def __init__(self, run_dir: str, steps: Callable[[dict], list[Step]], line, total: int, writer, done: int | None = None) -> None:
        self.run_dir, self.steps, self.line, self.total, self.writer = run_dir, steps, line, total, writer
        if done is None:
            card = newest_card(run_dir, steps)
            done = max((s["step"] for s in steps(card)), default=0) if card else 0
        self.last = done
        if self.last:
            print(f"  resuming after step {self.last} of {total}", flush=True)
        self.clock = (time.monotonic(), self.last)

    def poll(self) -> None:
        card = newest_card(self.run_dir, self.steps)
        if card is None:
            return
        for step in (s for s in self.steps(card) if s["step"] > self.last):
            self.last = step["step"]
            started, first = self.clock
            per_step = (time.monotonic() - started) / max(self.last - first, 1)
            if step.get("shown", True):
                print(f"  {self.line(step, self.total, per_step * (self.total - self.last))}", flush=True)
            for key, value in step.items():
                if key not in ("step", "shown") and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step["step"])
            self.writer.flush()


@contextmanager
def follow_training(
    run_dir: str,
    steps: Callable[[dict], list[Step]],
    line: Callable[[Step, int, float | None], str],
    total: int,
    done: int | None = None,
) -> Iterator[None]:
    """Print `line` for every new step of the run's newest card while the block runs (a daemon
    thread polls every `POLL_SECONDS`) and write its scalars as TensorBoard events to
    `run_dir/tensorboard/` (written locally, uploaded at the end for a URL run).

    `done`: the steps the training resumes after, when the caller knows them (a card of an epoch
    whose weights never arrived is not one); None reads them from the newest card."""
    from tensorboardX import SummaryWriter

    from karaoke.storage import is_url, join, upload_folder

    with tempfile.TemporaryDirectory(prefix="karaoke-tensorboard-") as staging:
        events = Path(staging) if is_url(run_dir) else Path(run_dir) / "tensorboard"
        writer = SummaryWriter(str(events))
        follower = _Follower(run_dir, steps, line, total, writer, done)
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(POLL_SECONDS):
                try:
                    follower.poll()
                except Exception:  # noqa: BLE001 - the progress lines wait for the next poll; training reports its own failure
                    continue

        thread = threading.Thread(target=watch, name="karaoke-follow", daemon=True)
        thread.start()
        try:
            yield
        except BaseException:
            # The block's failure is the one to report: no last poll of storage that may be what failed.
            stop.set()
            thread.join()
            writer.close()
            raise
        stop.set()
        thread.join()
        follower.poll()
        writer.close()
        if is_url(run_dir):
            upload_folder(staging, join(run_dir, "tensorboard"))
