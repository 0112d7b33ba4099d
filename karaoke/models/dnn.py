"""The paper's mask network and its training epoch (Simpson, Roma, Plumbley 2015, Sec. 2).

A window of T consecutive mixture-magnitude frames (n_bins, T), unpacked bin-major to
n_inputs = n_bins * T values, goes through hidden layers h = sigmoid(W x + c - b) with the fixed
offset b = `dnn.bias_offset` (6 in the paper) on top of the learned per-unit biases c, and an output
layer y = sigmoid(W h + c) of n_inputs values: the predicted ideal binary mask of the window.
`dnn.log_input_gain` > 0 (beyond the paper) log-compresses the input first, and
`dnn.architecture: conv` (beyond the paper) adds the logits of a convolutional branch over the same
compressed window (karaoke/models/conv.py).

`train_epoch` and `evaluate` take any iterable of batches (dicts with "mixture" and "ibm", each
(batch, n_bins, T)), so a Ray Train worker and a unit test run the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from karaoke.checkpoint import CARD, load_checkpoint, save_checkpoint
from karaoke.config import CHECKPOINT_SECTIONS, ExperimentConfig, TrainConfig
from karaoke.errors import CheckpointError, KaraokeError
from karaoke.models.conv import ConvBranch

KIND = "dnn"
# The config sections that define the network's shape: a checkpoint fits only a config equal in these.
OPTIMIZER_PREFIX = "optimizer."

Batch = Mapping[str, Any]


class TrainingError(KaraokeError, RuntimeError):
    """Training diverged (a NaN or infinite loss); nothing of the diverged model is saved."""


class BiasedSigmoid(nn.Module):
    """f(x) = sigmoid(x - offset): with offset 6 a unit is nearly off until its input is large."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = float(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x - self.offset)

    def extra_repr(self) -> str:
        return f"offset={self.offset}"


class MaskDNN(nn.Module):
    """Mixture-magnitude window (batch, n_bins, T) -> vocal probability per bin (batch, n_bins, T)."""

    def __init__(
        self,
        n_bins: int,
        n_frames: int,
        hidden_sizes: tuple[int, ...],
        bias_offset: float,
        log_input_gain: float = 0.0,
        dropout: float = 0.0,
        conv: ConvBranch | None = None,
        hidden_bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.n_bins, self.n_frames = n_bins, n_frames
        self.log_input_gain = float(log_input_gain)
        n_inputs = n_bins * n_frames
        layers: list[nn.Module] = []
        width = n_inputs
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), BiasedSigmoid(bias_offset)]
            if hidden_bias_init:
                nn.init.constant_(layers[-2].bias, hidden_bias_init)
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        # Output layer: plain sigmoid (offset 0), one probability per input value.
        layers += [nn.Linear(width, n_inputs), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self.conv = conv

    def logits(self, windows: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid output (batch, n_bins, T); the BCE loss uses it for numerical stability."""
        # unpack: (batch, n_bins, T) -> (batch, n_bins * T), bin-major as `window.reshape(-1)`
        x = windows.reshape(windows.shape[0], -1)
        if self.log_input_gain > 0:
            # compress: log1p(g x) / log1p(g) maps [0, 1] onto [0, 1] (`dnn.log_input_gain`)
            x = torch.log1p(x.clamp_min(0) * self.log_input_gain) / math.log1p(self.log_input_gain)
        logits = self.net[:-1](x).reshape(-1, self.n_bins, self.n_frames)
        if self.conv is not None:
            logits = logits + self.conv(x.reshape(-1, self.n_bins, self.n_frames))
        return logits

    def forward(self, windows: torch.Tensor, return_logits: bool = False) -> torch.Tensor:
        """Probabilities (batch, n_bins, T), or with `return_logits` their pre-sigmoid values. Losses
        call the model itself (not `.logits`) so that a DistributedDataParallel wrapper's forward runs:
        it arms the gradient all-reduce, which a call that bypasses it silently skips."""
        logits = self.logits(windows)
        return logits if return_logits else torch.sigmoid(logits)


def build_model(config: ExperimentConfig) -> MaskDNN:
    """The network of a config: n_inputs -> `config.hidden_sizes` -> n_inputs, plus the convolutional
    branch when `dnn.architecture` is "conv"."""
    dnn = config.dnn
    conv = ConvBranch(config.windows.n_frames, dnn.conv_channels, dnn.conv_layers) if dnn.architecture == "conv" else None
    return MaskDNN(
        config.stft.n_bins,
        config.windows.n_frames,
        config.hidden_sizes,
        dnn.bias_offset,
        dnn.log_input_gain,
        dnn.dropout,
        conv,
        dnn.hidden_bias_init,
    )


Sources = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[MaskDNN, torch.Tensor, torch.Tensor, "Sources | None"], tuple[torch.Tensor, torch.Tensor]]


def training_columns(train_cfg: TrainConfig) -> list[str]:
    """The window columns a training batch needs: the mixture and its IBM, and the unit-scale source
    magnitudes when the loss or the target is computed from them."""
    uses_sources = train_cfg.loss == "discriminative" or train_cfg.target == "ratio"
    return ["mixture", "ibm"] + (["vocals", "accompaniment"] if uses_sources else [])


def make_loss(train_cfg: TrainConfig) -> LossFn:
    """loss(model, mixture, ibm, sources) -> (mean loss over bins, probabilities), every tensor
    (batch, n_bins, T) and `sources` the unit-scale (|V|, |A|) or None.

    "mse" is the authors' squared error on the sigmoid output and "bce" the binary cross-entropy
    (computed from logits), both against the IBM, or with `train.target: ratio` against the ratio mask
    |V| / (|V| + |A|). "discriminative" (Huang et al. 2014, Eq. 7) is the squared error of the masked
    mixtures p|X| and (1 - p)|X| against |V| and |A|, minus `train.discriminative_weight` times their
    errors against the other source; the sigmoid output is already the two-source joint mask
    (p, 1 - p) of Huang et al.'s Eq. 4 (a softmax over two logits).

    With `train.bin_weight_power` q > 0 the mean is weighted: w = |X|^q / mean(|X|^q) over the batch,
    |X| the unit-scale mixture magnitude of each bin (q = 2 weighs errors as SDR does, by energy).
    With `train.reduction: sum` each window's errors are summed instead of averaged."""
    power, gamma = train_cfg.bin_weight_power, train_cfg.discriminative_weight

    def weighted_mean(per_bin: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        # `train.reduction: sum` adds the errors of a window's n_bins * T outputs (then averages
        # over the batch's windows): the mean times the window's size.
        size = per_bin[0].numel() if train_cfg.reduction == "sum" else 1
        if power == 0:
            return per_bin.mean() * size
        weight = mixture.float().clamp_min(0).pow(power)
        return (per_bin * weight).sum() / weight.sum().clamp_min(torch.finfo(weight.dtype).tiny) * size

    def target(ibm: torch.Tensor, sources: Sources | None) -> torch.Tensor:
        if train_cfg.target == "ibm":
            return ibm
        vocals, accompaniment = _require(sources)
        total = vocals + accompaniment
        # A silent bin (both sources 0) has no ratio: its IBM (0, accompaniment) stands in.
        return torch.where(total > 0, vocals / total.clamp_min(torch.finfo(total.dtype).tiny), ibm)

    def mse(model: MaskDNN, mixture: torch.Tensor, ibm: torch.Tensor, sources: Sources | None = None):
        prob = torch.sigmoid(model(mixture, return_logits=True).float())
        return weighted_mean((prob - target(ibm, sources)) ** 2, mixture), prob

    def bce(model: MaskDNN, mixture: torch.Tensor, ibm: torch.Tensor, sources: Sources | None = None):
        logits = model(mixture, return_logits=True).float()
        per_bin = nn.functional.binary_cross_entropy_with_logits(logits, target(ibm, sources), reduction="none")
        return weighted_mean(per_bin, mixture), torch.sigmoid(logits)

    def discriminative(model: MaskDNN, mixture: torch.Tensor, ibm: torch.Tensor, sources: Sources | None = None):
        vocals, accompaniment = _require(sources)
        prob = torch.sigmoid(model(mixture, return_logits=True).float())
        est_vocals, est_accompaniment = prob * mixture, (1 - prob) * mixture
        own = (est_vocals - vocals) ** 2 + (est_accompaniment - accompaniment) ** 2
        other = (est_vocals - accompaniment) ** 2 + (est_accompaniment - vocals) ** 2
        return weighted_mean(own - gamma * other, mixture), prob

    return {"mse": mse, "bce": bce, "discriminative": discriminative}[train_cfg.loss]


def _require(sources: Sources | None) -> Sources:
    if sources is None:
        raise ValueError("this loss needs the source magnitudes: batches must hold vocals and accompaniment")
    return sources


def schedule_learning_rate(optimizer: torch.optim.Optimizer, train_cfg: TrainConfig, epoch: int) -> float:
    """Set (and return) the rate of 1-based `epoch`: `learning_rate` throughout ("constant"), or
    lr_e = lr (1 + cos(pi (e - 1) / E)) / 2 over E = `train.epochs` ("cosine"). A function of the epoch
    alone, so a run resumed from a checkpoint continues on the same schedule."""
    rate = train_cfg.learning_rate
    if train_cfg.lr_schedule == "cosine":
        rate *= 0.5 * (1 + math.cos(math.pi * (epoch - 1) / train_cfg.epochs))
    for group in optimizer.param_groups:
        group["lr"] = rate
    return rate


def _unwrap(model: nn.Module) -> MaskDNN:
    """The MaskDNN inside a DistributedDataParallel wrapper (for its state dict; never for a forward)."""
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def make_optimizer(model: nn.Module, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the authors' lr 0.1, momentum 0.5) or Adam at `learning_rate`."""
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=train_cfg.learning_rate, momentum=train_cfg.momentum)
    return torch.optim.Adam(model.parameters(), lr=train_cfg.learning_rate)


def pick_device(name: str | None = None) -> torch.device:
    """The device `name` ("cpu" or "cuda"), or by default the GPU when there is one; `ConfigError`
    when "cuda" is asked for and PyTorch sees no GPU."""
    from karaoke.errors import ConfigError

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: choose cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device cuda: PyTorch sees no CUDA GPU here (torch {torch.__version__}"
            f"{', a CPU-only build' if torch.version.cuda is None else ''}); use --device cpu"
        )
    return torch.device(name)


def _autocast(device: torch.device):
    # bfloat16 autocast on GPU: half the memory traffic, and unlike float16 it needs no loss scaling.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _to_device(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, Sources | None]:
    """(mixture, ibm, (vocals, accompaniment) or None when the batch does not hold them), as float."""
    def tensor(name: str) -> torch.Tensor:
        return torch.as_tensor(batch[name]).to(device, non_blocking=True).float()

    sources = (tensor("vocals"), tensor("accompaniment")) if "vocals" in batch else None
    return tensor("mixture"), tensor("ibm"), sources


@dataclass(frozen=True)
class EpochStats:
    """Window-weighted means over an epoch: loss and mask accuracy (p > 0.5 agrees with the IBM)."""

    loss: float
    accuracy: float
    n_windows: int


def train_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    device: torch.device | None = None,
) -> EpochStats:
    """One pass of minibatch training over `batches`; raises `TrainingError` on a non-finite loss
    before the optimizer step, so the weights never take a NaN update."""
    device = device or pick_device()
    model.train()
    total_loss = total_correct = 0.0
    n_windows = n_bins = 0
    for step, batch in enumerate(batches):
        mixture, ibm, sources = _to_device(batch, device)
        with _autocast(device):
            loss, prob = loss_fn(model, mixture, ibm, sources)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at batch {step}; lower train.learning_rate or use train.loss=bce"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = mixture.shape[0]
        total_loss += loss.item() * n
        total_correct += ((prob.detach() > 0.5) == (ibm > 0.5)).sum().item()
        n_windows += n
        n_bins += ibm.numel()
    return EpochStats(total_loss / max(n_windows, 1), total_correct / max(n_bins, 1), n_windows)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], loss_fn: Callable, device: torch.device | None = None) -> EpochStats:
    """Loss and mask accuracy on held-out batches, without updating the model."""
    device = device or pick_device()
    model.eval()
    total_loss = total_correct = 0.0
    n_windows = n_bins = 0
    for batch in batches:
        mixture, ibm, sources = _to_device(batch, device)
        with _autocast(device):
            loss, prob = loss_fn(model, mixture, ibm, sources)
        n = mixture.shape[0]
        total_loss += loss.item() * n
        total_correct += ((prob > 0.5) == (ibm > 0.5)).sum().item()
        n_windows += n
        n_bins += ibm.numel()
    return EpochStats(total_loss / max(n_windows, 1) if n_windows else math.nan, total_correct / max(n_bins, 1), n_windows)


def save_dnn(
    directory: str | Path,
    model: nn.Module,
    config: ExperimentConfig,
    epoch: int,
    metrics: dict[str, float],
    optimizer: torch.optim.Optimizer | None = None,
    **extra: Any,
) -> Path:
    """Checkpoint folder (safetensors + card with the epoch, metrics and `extra`); the optimizer's
    state (e.g. SGD momentum buffers) is stored beside the weights so that a resumed run continues
    exactly. Non-finite metrics are a `TrainingError`: a diverged model is never saved."""
    for name, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise TrainingError(f"refusing to checkpoint epoch {epoch}: metric {name} is {value}")
    tensors = dict(_unwrap(model).state_dict())
    if optimizer is not None:
        for index, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"{OPTIMIZER_PREFIX}{index}.{key}"] = torch.as_tensor(value)
    return save_checkpoint(directory, tensors, config, KIND, epoch=epoch, metrics=metrics, **extra)


def load_dnn(
    directory: str | Path, config: ExperimentConfig | None = None, device: str | torch.device = "cpu"
) -> tuple[MaskDNN, ExperimentConfig, dict[str, Any]]:
    """Rebuild the network of a checkpoint: returns (model in eval mode, its config, its card).

    With `config`, a checkpoint trained with other stft/windows/dnn sections is a `CheckpointError`.
    """
    tensors, stored, card = load_checkpoint(directory, KIND, config, CHECKPOINT_SECTIONS[KIND])
    model = build_model(stored)
    _load_weights(model, tensors, directory)
    return model.to(device).eval(), stored, card


def _load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], directory: str | Path) -> None:
    """The checkpoint's weights into `model`; `CheckpointError` when they do not fit the network its
    card's config describes (a card edited or copied from another checkpoint)."""
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    try:
        _unwrap(model).load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"{directory}: its weights do not fit the network its {CARD} describes ({first}); "
            "the card belongs to another checkpoint"
        ) from None


def restore_training(
    directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: ExperimentConfig
) -> dict[str, Any]:
    """Load a checkpoint's weights and optimizer state into `model` and `optimizer` (resume); returns
    the card, whose "epoch" is the last finished epoch."""
    tensors, _, card = load_checkpoint(directory, KIND, config, CHECKPOINT_SECTIONS[KIND])
    _load_weights(model, tensors, directory)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIMIZER_PREFIX):
            index, name = key[len(OPTIMIZER_PREFIX) :].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    return card
