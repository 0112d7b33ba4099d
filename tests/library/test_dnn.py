"""The mask DNN: shapes, the biased sigmoid, training on the synthetic corpus, safe checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import small_config_dict

from karaoke.config import config_from_dict
from karaoke.corpora import list_songs
from karaoke.errors import CheckpointError
from karaoke.features import song_features, training_rows
from karaoke.models.dnn import (
    BiasedSigmoid,
    TrainingError,
    build_model,
    evaluate,
    load_dnn,
    make_loss,
    make_optimizer,
    restore_training,
    save_dnn,
    schedule_learning_rate,
    train_epoch,
    training_columns,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_shapes_and_parameter_count(small_config):
    model = build_model(small_config)
    windows = torch.rand(3, 257, 20)
    assert model(windows).shape == (3, 257, 20)
    n_inputs = 257 * 20
    assert sum(p.numel() for p in model.parameters()) == (n_inputs * 64 + 64) + (64 * n_inputs + n_inputs)


def test_default_hidden_layer_is_as_wide_as_the_input():
    config = config_from_dict({"stft": {"n_fft": 64, "hop_length": 16}, "dnn": {"n_hidden_layers": 2}})
    assert config.hidden_sizes == (33 * 20, 33 * 20)
    linear = [m for m in build_model(config).modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(660, 660), (660, 660), (660, 660)]


def test_biased_sigmoid_offsets_hidden_units_but_not_the_output(small_config):
    x = torch.linspace(-10, 10, 41)
    assert torch.allclose(BiasedSigmoid(6.0)(x), torch.sigmoid(x - 6.0))
    assert BiasedSigmoid(6.0)(torch.tensor(6.0)).item() == pytest.approx(0.5)
    model = build_model(small_config)
    hidden, output = model.net[0], model.net[2]
    with torch.no_grad():
        hidden.weight.zero_()
        hidden.bias.fill_(2.0)  # learned per-unit bias, kept beside the fixed offset
        output.weight.zero_()
        output.bias.zero_()
    activations = model.net[1](model.net[0](torch.zeros(1, 257 * 20)))
    assert torch.allclose(activations, torch.full_like(activations, torch.sigmoid(torch.tensor(2.0 - 6.0)).item()))
    # output layer: sigmoid with no offset, so a zero pre-activation is p = 0.5
    assert torch.allclose(model(torch.rand(2, 257, 20)), torch.full((2, 257, 20), 0.5))


def _batches(rows: dict[str, np.ndarray], batch_size: int, seed: int):
    order = np.random.default_rng(seed).permutation(len(rows["mixture"]))
    for start in range(0, len(order), batch_size):
        pick = order[start : start + batch_size]
        # as stored by the preparation job: float16 magnitudes, uint8 IBM
        yield {"mixture": torch.from_numpy(rows["mixture"][pick].astype(np.float16)),
               "ibm": torch.from_numpy(rows["ibm"][pick].astype(np.uint8))}


@pytest.fixture(scope="module")
def synth_rows(synth_root):
    config = config_from_dict(small_config_dict(str(synth_root), windows={"train_hop": 6}))
    rows = {}
    for split in ("train", "test"):
        parts = [training_rows(song_features(s.load(16000), config), config) for s in list_songs(config.corpus, split)]
        rows[split] = {k: np.concatenate([p[k] for p in parts]) for k in ("mixture", "ibm")}
    return rows


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_loss_falls_over_a_few_epochs_on_the_synthetic_corpus(synth_root, synth_rows, loss):
    config = config_from_dict(
        small_config_dict(str(synth_root), train={"loss": loss, "optimizer": "adam", "learning_rate": 1e-3})
    )
    torch.manual_seed(0)
    model = build_model(config)
    optimizer, loss_fn = make_optimizer(model, config.train), make_loss(config.train)
    device = torch.device("cpu")
    before = evaluate(model, _batches(synth_rows["test"], 64, 0), loss_fn, device)
    stats = [train_epoch(model, _batches(synth_rows["train"], 16, epoch), optimizer, loss_fn, device) for epoch in range(4)]
    after = evaluate(model, _batches(synth_rows["test"], 64, 0), loss_fn, device)
    assert stats[0].n_windows == len(synth_rows["train"]["mixture"])
    assert stats[-1].loss < 0.8 * stats[0].loss
    assert after.loss < before.loss
    assert after.accuracy > before.accuracy + 0.1


def test_paper_recipe_is_sgd_with_momentum(small_config):
    optimizer = make_optimizer(build_model(small_config), config_from_dict({}).train)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 0.1 and optimizer.defaults["momentum"] == 0.5


def _train_config(**train):
    return config_from_dict({"train": train}).train


class _FixedLogits(torch.nn.Module):
    """Stands in for the network: returns the same logits whatever the mixture."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(logits.clone())

    def forward(self, mixture: torch.Tensor, return_logits: bool = False) -> torch.Tensor:
        return self.value if return_logits else torch.sigmoid(self.value)


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_bin_weights_follow_the_mixture_magnitude(loss):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, generator=generator)
    ibm = (torch.rand(2, 5, 3, generator=generator) > 0.5).float()
    mixture = torch.rand(2, 5, 3, generator=generator)
    plain = make_loss(_train_config(loss=loss))(_FixedLogits(logits), mixture, ibm)[0]
    per_bin = (
        (torch.sigmoid(logits) - ibm) ** 2
        if loss == "mse"
        else torch.nn.functional.binary_cross_entropy_with_logits(logits, ibm, reduction="none")
    )
    assert plain.item() == pytest.approx(per_bin.mean().item(), rel=1e-6)

    weighted = make_loss(_train_config(loss=loss, bin_weight_power=2.0))(_FixedLogits(logits), mixture, ibm)[0]
    assert weighted.item() == pytest.approx(((per_bin * mixture**2).sum() / (mixture**2).sum()).item(), rel=1e-6)

    # A silent bin carries no weight: its error neither counts nor trains the network.
    mixture[0, 0, 0] = 0.0
    model = _FixedLogits(logits)
    make_loss(_train_config(loss=loss, bin_weight_power=1.0))(model, mixture, ibm)[0].backward()
    assert model.value.grad[0, 0, 0].item() == 0.0
    assert model.value.grad[0, 1, 0].item() != 0.0


def test_ratio_target_and_the_discriminative_loss_read_the_sources():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 3, generator=generator)
    vocals, accompaniment = torch.rand(2, 5, 3, generator=generator), torch.rand(2, 5, 3, generator=generator)
    vocals[0, 0, 0] = accompaniment[0, 0, 0] = 0.0  # a silent bin: no ratio, the IBM stands in
    mixture, ibm = vocals + accompaniment, (vocals > accompaniment).float()
    sources = (vocals, accompaniment)
    prob = torch.sigmoid(logits)

    ratio = torch.where(mixture > 0, vocals / mixture.clamp_min(1e-30), ibm)
    assert ratio[0, 0, 0].item() == 0.0
    loss = make_loss(_train_config(loss="bce", target="ratio"))(_FixedLogits(logits), mixture, ibm, sources)[0]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, ratio)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert training_columns(_train_config(loss="bce", target="ratio")) == ["mixture", "ibm", "vocals", "accompaniment"]
    assert training_columns(_train_config(loss="bce")) == ["mixture", "ibm"]

    # Huang et al.'s objective: each masked mixture against its own source, minus gamma times the other.
    gamma = 0.1
    loss = make_loss(_train_config(loss="discriminative", discriminative_weight=gamma))(_FixedLogits(logits), mixture, ibm, sources)[0]
    v_hat, a_hat = prob * mixture, (1 - prob) * mixture
    own = (v_hat - vocals) ** 2 + (a_hat - accompaniment) ** 2
    other = (v_hat - accompaniment) ** 2 + (a_hat - vocals) ** 2
    assert loss.item() == pytest.approx((own - gamma * other).mean().item(), rel=1e-6)
    # Its minimum over p is the ratio mask when the sources add up to the mixture: a network that
    # outputs the ratio has a smaller loss than one that outputs the IBM.
    at_ratio = make_loss(_train_config(loss="discriminative"))(_FixedLogits(torch.logit(ratio.clamp(1e-4, 1 - 1e-4))), mixture, ibm, sources)[0]
    at_ibm = make_loss(_train_config(loss="discriminative"))(_FixedLogits(torch.logit(ibm.clamp(1e-4, 1 - 1e-4))), mixture, ibm, sources)[0]
    assert at_ratio < at_ibm
    with pytest.raises(ValueError, match="source magnitudes"):
        make_loss(_train_config(loss="discriminative"))(_FixedLogits(logits), mixture, ibm)


def test_convolutional_branch_starts_as_the_dense_network_and_shares_filters_across_bins(small_config):
    from dataclasses import replace

    conv_config = replace(small_config, dnn=replace(small_config.dnn, architecture="conv", conv_channels=4, conv_layers=3))
    dense, model = build_model(small_config), build_model(conv_config)
    model.net.load_state_dict(dense.net.state_dict())
    windows = torch.rand(3, 257, 20)
    # zero-initialised head: the branch adds nothing until it is trained
    assert torch.equal(model(windows), dense(windows))
    n_branch = sum(p.numel() for p in model.conv.parameters())
    assert n_branch == (20 * 4 * 5 + 4) + 3 * (4 * 4 * 3 + 4) + (4 * 20 + 20)

    # After training steps the branch is in use, and its output moves with the input along frequency:
    # a pattern shifted by k bins gives the branch's logits shifted by k bins (away from the edges).
    optimizer = torch.optim.Adam(model.conv.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(windows, return_logits=True).pow(2).mean().backward()
        optimizer.step()
    assert not torch.equal(model(windows), dense(windows))
    pattern = torch.zeros(1, 257, 20)
    pattern[0, 100:110] = torch.rand(10, 20)
    shifted = torch.roll(pattern, 30, dims=1)
    with torch.no_grad():
        logits, logits_shifted = model.conv(pattern), model.conv(shifted)
    assert torch.allclose(torch.roll(logits, 30, dims=1)[0, 60:200], logits_shifted[0, 60:200], atol=1e-5)


def test_cosine_schedule_decays_from_the_learning_rate_and_depends_on_the_epoch_alone(small_config):
    model = build_model(small_config)
    constant = make_optimizer(model, _train_config(optimizer="adam", learning_rate=1e-3, epochs=4))
    assert [schedule_learning_rate(constant, _train_config(learning_rate=1e-3, epochs=4), e) for e in (1, 4)] == [1e-3, 1e-3]

    cosine = _train_config(optimizer="adam", learning_rate=1e-3, epochs=4, lr_schedule="cosine")
    optimizer = make_optimizer(model, cosine)
    rates = [schedule_learning_rate(optimizer, cosine, epoch) for epoch in range(1, 5)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates == sorted(rates, reverse=True) and rates[-1] > 0
    assert rates[2] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 2 / 4)))
    assert optimizer.param_groups[0]["lr"] == rates[-1]
    # resuming at epoch 3 in a fresh optimizer gives the same rate as the uninterrupted run
    assert schedule_learning_rate(make_optimizer(model, cosine), cosine, 3) == rates[2]


def test_nan_loss_stops_training_before_the_weights_change(small_config):
    model = build_model(small_config)
    optimizer, loss_fn = make_optimizer(model, small_config.train), make_loss(small_config.train)
    before = [p.detach().clone() for p in model.parameters()]
    good = {"mixture": torch.rand(4, 257, 20), "ibm": torch.zeros(4, 257, 20)}
    bad = {"mixture": torch.full((4, 257, 20), float("nan")), "ibm": torch.zeros(4, 257, 20)}
    with pytest.raises(TrainingError, match="batch 1"):
        train_epoch(model, [good, bad], optimizer, loss_fn, torch.device("cpu"))
    after_first = [p.detach().clone() for p in model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, after_first, strict=True))  # the good batch did train
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_round_trip_resume_and_refusals(small_config, tmp_path):
    torch.manual_seed(1)
    model = build_model(small_config)
    optimizer, loss_fn = make_optimizer(model, small_config.train), make_loss(small_config.train)
    train_epoch(model, [{"mixture": torch.rand(4, 257, 20), "ibm": torch.ones(4, 257, 20)}], optimizer, loss_fn)
    save_dnn(tmp_path / "ckpt", model, small_config, 3, {"train_loss": 0.2}, optimizer)
    card = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    assert card["epoch"] == 3 and card["metrics"] == {"train_loss": 0.2}

    loaded, config, _ = load_dnn(tmp_path / "ckpt", small_config)
    x = torch.rand(2, 257, 20)
    assert config == small_config and torch.equal(loaded(x), model.eval()(x))

    fresh = build_model(small_config)
    fresh_optimizer = make_optimizer(fresh, small_config.train)
    assert restore_training(tmp_path / "ckpt", fresh, fresh_optimizer, small_config)["epoch"] == 3
    for p, q in zip(optimizer.param_groups[0]["params"], fresh_optimizer.param_groups[0]["params"], strict=True):
        assert torch.equal(optimizer.state[p]["momentum_buffer"], fresh_optimizer.state[q]["momentum_buffer"])

    wider = config_from_dict(small_config_dict(small_config.corpus.root, dnn={"hidden_sizes": [32]}))
    with pytest.raises(CheckpointError, match="another config"):
        load_dnn(tmp_path / "ckpt", wider)
    with pytest.raises(TrainingError, match="train_loss is nan"):
        save_dnn(tmp_path / "nan", model, small_config, 4, {"train_loss": float("nan")})
    assert not (tmp_path / "nan" / "checkpoint.json").exists()


def test_latest_checkpoint_skips_an_epoch_whose_weights_do_not_verify(small_config, tmp_path, caplog):
    from karaoke.checkpoint import latest_checkpoint, resolve_checkpoint

    model = build_model(small_config)
    for epoch in (1, 2, 3):
        save_dnn(tmp_path / f"epoch_{epoch:04d}", model, small_config, epoch, {"train_loss": 0.1})
    assert latest_checkpoint(tmp_path) == str(tmp_path / "epoch_0003")
    # Weights cut short after the card was written (a copy killed mid-file), and a folder of weights only.
    weights = tmp_path / "epoch_0003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (tmp_path / "epoch_0004").mkdir()
    (tmp_path / "epoch_0004" / "model.safetensors").write_bytes(b"partial")
    with caplog.at_level("WARNING"):
        assert latest_checkpoint(tmp_path) == str(tmp_path / "epoch_0002")
    assert "epoch_0003" in caplog.text and "truncated or tampered" in caplog.text
    assert resolve_checkpoint(tmp_path) == str(tmp_path / "epoch_0002")
    assert resolve_checkpoint(tmp_path / "epoch_0001") == str(tmp_path / "epoch_0001")
    # A `karaoke run` folder names its DNN's: RUN/dnn/epoch_NNNN.
    run = tmp_path / "run"
    save_dnn(run / "dnn" / "epoch_0007", model, small_config, 7, {"train_loss": 0.1})
    assert resolve_checkpoint(run) == str(run / "dnn" / "epoch_0007")
