"""Safe checkpoints: tensors in safetensors (no pickle, nothing executed on load) plus a JSON card
holding the model kind, the resolved config and the SHA-256 of the tensor file.

A checkpoint is a folder:
    model.safetensors   the tensors
    checkpoint.json     {"kind", "config", "sha256", "format", ...extra}
Loading refuses a folder whose tensors do not match their recorded digest (tampered or truncated),
a pickle file, a checkpoint of another kind, and one whose model-defining config sections differ
from the caller's, each with a `CheckpointError` naming the path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from karaoke.config import (
    ExperimentConfig,
    config_digest,
    config_from_dict,
    config_to_dict,
)
from karaoke.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "karaoke-checkpoint/1"
TENSORS = "model.safetensors"
CARD = "checkpoint.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    directory: str | Path, tensors: dict[str, Any], config: ExperimentConfig, kind: str, **extra: Any
) -> Path:
    """Write `tensors` (name -> torch.Tensor) and the card; the card is written last (atomically),
    so a folder without a card is an unfinished checkpoint."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensor_path = directory / TENSORS
    tmp = directory / f".{TENSORS}.partial"
    tmp_card = directory / f".{CARD}.partial"
    # safetensors creates its file 0600; the weights take the mode of a file made under the user's
    # umask, so that a model exported to share is as readable as its card.
    tmp_card.touch()
    save_file({name: t.detach().contiguous().cpu() for name, t in tensors.items()}, str(tmp))
    shutil.copymode(tmp_card, tmp)
    os.replace(tmp, tensor_path)
    card = {"format": FORMAT, "kind": kind, "sha256": _sha256(tensor_path), "config": config_to_dict(config), **extra}
    tmp_card.write_text(json.dumps(card, indent=2))
    os.replace(tmp_card, directory / CARD)
    return directory


def load_checkpoint(
    directory: str | Path,
    kind: str,
    config: ExperimentConfig | None = None,
    sections: tuple[str, ...] = (),
    device: str = "cpu",
) -> tuple[dict[str, Any], ExperimentConfig, dict[str, Any]]:
    """Load and verify a checkpoint folder: returns (tensors, its config, its card).

    When `config` is given, the checkpoint's `sections` of the config (e.g. ("stft", "windows", "dnn"))
    must equal the caller's, or the weights would not fit the model built from it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if directory.is_file():
        raise CheckpointError(
            f"{directory}: expected a checkpoint folder with {CARD} and {TENSORS}; pickled .pt/.pth files "
            "are refused because loading them can execute code"
        )
    card_path, tensor_path = directory / CARD, directory / TENSORS
    if not card_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint (missing {CARD} or {TENSORS}); was training interrupted?")
    try:
        card = json.loads(card_path.read_text())
        stored_config = config_from_dict(card["config"], source=str(card_path))
        expected_digest, stored_kind = card["sha256"], card["kind"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{card_path}: unreadable checkpoint card ({exc!r})") from None
    if stored_kind != kind:
        raise CheckpointError(f"{directory}: this is a {stored_kind!r} checkpoint, a {kind!r} one is needed")
    if _sha256(tensor_path) != expected_digest:
        raise CheckpointError(f"{tensor_path}: contents do not match the digest in {CARD} (tampered or truncated)")
    if config is not None and sections:
        if config_digest(config, *sections) != config_digest(stored_config, *sections):
            ours, theirs = config_to_dict(config), config_to_dict(stored_config)
            diffs = [f"{s}: checkpoint {theirs[s]} vs config {ours[s]}" for s in sections if ours[s] != theirs[s]]
            raise CheckpointError(f"{directory}: checkpoint was trained with another config ({'; '.join(diffs)})")
    try:
        tensors = load_file(str(tensor_path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{tensor_path}: not a valid safetensors file ({exc})") from None
    return tensors, stored_config, card


# A training run folder holds one checkpoint per epoch: RUN/epoch_0001/, RUN/epoch_0002/, ...
EPOCH_PREFIX = "epoch_"


def epoch_folder(epoch: int) -> str:
    """The name of epoch `epoch`'s checkpoint folder in a training run folder."""
    return f"{EPOCH_PREFIX}{epoch:04d}"


def checkpoint_problem(directory: str | Path) -> str | None:
    """Why a local checkpoint folder does not verify (no card, no tensors, an unreadable card, tensors
    that do not match the card's digest), or None when it does. Loads no tensors."""
    directory = Path(directory)
    card_path, tensor_path = directory / CARD, directory / TENSORS
    if not card_path.is_file() or not tensor_path.is_file():
        return f"missing {CARD if not card_path.is_file() else TENSORS}"
    try:
        expected = json.loads(card_path.read_text())["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return f"unreadable {CARD} ({exc!r})"
    if _sha256(tensor_path) != expected:
        return f"{TENSORS} does not match the digest in {CARD} (truncated or tampered)"
    return None


def latest_checkpoint(run_dir: str | Path) -> str | None:
    """The last epoch checkpoint in a training run folder (local or URL) that verifies, or None.

    Ray Train copies a checkpoint folder file by file, so a kill can leave a card beside partial
    weights: such an epoch is skipped, with a warning naming it, for the newest one that verifies.
    """
    from karaoke.storage import is_url, local_copy, open_fs

    run_dir = str(run_dir)
    fs, root = open_fs(run_dir)
    scheme = f"{run_dir.split('://', 1)[0]}://" if is_url(run_dir) else ""
    for card in sorted(fs.glob(f"{root}/{EPOCH_PREFIX}*/{CARD}"), reverse=True):
        folder = scheme + card.rsplit("/", 1)[0]
        with local_copy(folder) as local:
            problem = checkpoint_problem(local)
        if problem is None:
            return folder
        log.warning("skipping checkpoint %s: %s; using the newest one before it that verifies", folder, problem)
    return None


def resolve_checkpoint(location: str | Path) -> str:
    """A checkpoint folder as given, a training folder's last epoch checkpoint, or that of a `karaoke
    run` folder's DNN (RUN/dnn)."""
    from karaoke.storage import exists, join

    if not exists(join(str(location), CARD)):
        for folder in (str(location), join(str(location), "dnn")):
            last = latest_checkpoint(folder)
            if last is not None:
                return last
    return str(location)


def retained_epochs(history: Sequence[dict], keep_last: int) -> set[int]:
    """The epochs whose checkpoints a training run keeps: the last `keep_last` of `history` (one
    metrics dict per epoch, with `epoch`) and the best, by lowest `valid_loss` (`train_loss` for a
    run without validation windows)."""
    if not history:
        return set()
    metric = "valid_loss" if all(row.get("valid_loss") is not None for row in history) else "train_loss"
    best = min(history, key=lambda row: (row[metric], row["epoch"]))
    return {row["epoch"] for row in history[-keep_last:]} | {best["epoch"]}


def prune_checkpoints(run_dir: str | Path, keep: set[int]) -> list[str]:
    """Delete the epoch checkpoint folders of a training run folder (local or URL) whose epoch is not
    in `keep`; returns the names deleted. A folder of an epoch in `keep` is never touched, so the
    newest verified checkpoint, the one a resume starts from, survives any interruption here."""
    from karaoke.storage import open_fs

    fs, root = open_fs(str(run_dir))
    deleted = []
    for path in sorted(fs.glob(f"{root}/{EPOCH_PREFIX}*")):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        suffix = name[len(EPOCH_PREFIX):]
        if suffix.isdigit() and int(suffix) not in keep:
            fs.rm(path, recursive=True)
            deleted.append(name)
    return deleted
