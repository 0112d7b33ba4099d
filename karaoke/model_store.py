"""Separation models by name, folder or URL: shipped, exported, downloaded once and cached.

A model is a DNN checkpoint folder (`karaoke.checkpoint`: `model.safetensors` + `checkpoint.json`,
whose sha256 every load verifies). `export_model` makes a shippable one from a training run or
checkpoint: float16 weights without optimizer state, and a card that adds its `name`, a one-line
`description` and the `training_data` to the config the network needs (stft, windows, dnn,
evaluation.mask and alpha, corpus.sample_rate).

`locate_model(spec)` resolves what `--model` / `Separator.from_pretrained` take:
- None: the default model, `DEFAULT_MODEL`;
- a URL (`https://`, `http://`, `s3://`) of a model folder: downloaded once into the cache
  (`$KARAOKE_CACHE`, else `~/.cache/karaoke`), under `models/<digest of the URL>/`; the download
  goes to a hidden folder, is verified against its card's digest and only then renamed into place,
  so an interrupted or corrupt download never looks complete;
- a name: a model shipped inside the package (`karaoke/pretrained/<name>/`), else a cached one
  whose card has that name;
- otherwise a local path: a checkpoint or exported folder, or a training run folder (its last
  epoch).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from karaoke.checkpoint import CARD, TENSORS, checkpoint_problem, resolve_checkpoint
from karaoke.errors import CheckpointError

DEFAULT_MODEL = "mir1k"
URL_SCHEMES = ("http://", "https://", "s3://")


@dataclass(frozen=True)
class ModelInfo:
    """A model `karaoke models` lists: its name, where it is, and its card's one-line description."""

    name: str
    folder: Path
    origin: str  # "shipped" or "cached"
    description: str


def shipped_folder() -> Path:
    """Where the package's own models live: karaoke/pretrained/<name>/."""
    return Path(__file__).resolve().parent / "pretrained"


def cache_folder() -> Path:
    """The download cache: $KARAOKE_CACHE, else ~/.cache/karaoke."""
    return Path(os.environ.get("KARAOKE_CACHE") or Path.home() / ".cache" / "karaoke")


def _card(folder: Path) -> dict:
    try:
        return json.loads((folder / CARD).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _models_in(root: Path, origin: str) -> list[ModelInfo]:
    if not root.is_dir():
        return []
    models = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        card = _card(folder)
        if card:
            name = card.get("name") or folder.name
            models.append(ModelInfo(name, folder, origin, card.get("description", "")))
    return models


def available_models() -> list[ModelInfo]:
    """The shipped models, then the cached ones, each with its card's description."""
    return _models_in(shipped_folder(), "shipped") + _models_in(cache_folder() / "models", "cached")


def model_name(folder: Path) -> str:
    """The name outputs are filed under: the card's `name` (exported models), else the config's
    name and the checkpoint folder's, e.g. "mir1k-epoch_0010"."""
    card = _card(folder)
    if card.get("name"):
        return str(card["name"])
    return f"{card.get('config', {}).get('name', 'model')}-{folder.name}"


def locate_model(spec: str | Path | None = None) -> Path:
    """The local checkpoint folder of `spec` (see the module docstring); `CheckpointError` in one
    line naming the fix when there is none."""
    spec = DEFAULT_MODEL if spec is None else str(spec)
    if spec.startswith(URL_SCHEMES):
        return download_model(spec)
    for model in available_models():
        if model.name == spec or (model.origin == "shipped" and model.folder.name == spec):
            return model.folder
    if Path(spec).exists():
        return Path(resolve_checkpoint(spec))
    if spec == DEFAULT_MODEL:
        raise CheckpointError(
            f"the default model {DEFAULT_MODEL!r} is not installed ({shipped_folder() / DEFAULT_MODEL} is missing); "
            "pass --model RUN/dnn (a training run), a model folder or a URL, or make one with `karaoke export`"
        )
    names = ", ".join(sorted({m.name for m in available_models()})) or "none installed"
    raise CheckpointError(f"{spec}: no such model name, folder or URL (models: {names}; see `karaoke models`)")


def download_model(url: str) -> Path:
    """The cached copy of the model folder at `url`, downloaded (its card and weights) and verified
    on first use; later calls read only the cache."""
    from karaoke.storage import join, open_fs

    root = cache_folder() / "models"
    target = root / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    if target.is_dir() and checkpoint_problem(target) is None:
        return target
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{target.name}.{uuid.uuid4().hex}.partial"
    partial.mkdir()
    try:
        for name in (CARD, TENSORS):
            try:
                fs, path = open_fs(join(url, name))
                with fs.open(path, "rb") as source, open(partial / name, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
            except (OSError, ValueError) as exc:  # fsspec raises FileNotFoundError, aiohttp errors are OSErrors
                raise CheckpointError(f"{join(url, name)}: cannot download the model ({exc}); check the URL") from None
        problem = checkpoint_problem(partial)
        if problem is not None:
            raise CheckpointError(f"{url}: the downloaded model does not verify ({problem}); nothing was cached")
        (partial / "source.json").write_text(json.dumps({"url": url}))
        if target.exists():
            shutil.rmtree(target)  # a copy that failed its check
        os.replace(partial, target)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return target


def export_model(source: str | Path, name: str, out_dir: str | Path = ".", description: str | None = None) -> Path:
    """Write `out_dir/name/`: the DNN of `source` (a checkpoint folder or URL, or a training run's
    last epoch) with float16 weights and a card holding its name, description, training data,
    config and the weights' digest. Refuses an existing target and weights float16 cannot hold."""
    import torch

    from karaoke.checkpoint import load_checkpoint, save_checkpoint
    from karaoke.models.dnn import KIND, OPTIMIZER_PREFIX
    from karaoke.storage import local_copy

    if not name or "/" in name or name.startswith("."):
        raise CheckpointError(f"--name {name!r}: a model name is one word (letters, digits, -, _), e.g. mir1k")
    target = Path(out_dir) / name
    if target.exists():
        raise CheckpointError(f"{target}: already exists; remove it or choose another --name or --out")
    with local_copy(resolve_checkpoint(source)) as folder:
        tensors, config, card = load_checkpoint(folder, KIND)
    weights = {k: v.to(torch.float16) for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    for key, value in weights.items():
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{source}: weight {key} exceeds float16's range; this model cannot be exported")
    corpus = config.corpus
    training = f"{corpus.layout} corpus at {corpus.sample_rate} Hz"
    if corpus.layout == "mir1k":
        training = f"MIR-1K (Hsu & Jang 2010, research use), singers {', '.join(corpus.train_singers)}, at {corpus.sample_rate} Hz"
    hidden = " -> ".join(str(h) for h in config.hidden_sizes)
    dnn = config.dnn
    branch = f" with a {dnn.conv_layers}-layer, {dnn.conv_channels}-channel convolutional branch" if dnn.architecture == "conv" else ""
    summary = (
        f"mask DNN {config.n_inputs} -> {hidden} -> {config.n_inputs}{branch} at {corpus.sample_rate} Hz, "
        f"{config.evaluation.mask} masks, trained on {training}"
    )
    partial = Path(out_dir) / f".{name}.{uuid.uuid4().hex}.partial"
    try:
        save_checkpoint(
            partial, weights, config, KIND, name=name, description=description or summary,
            training_data=training, epoch=card.get("epoch"), metrics=card.get("metrics", {}),
        )
        os.replace(partial, target)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return target
