import pytest

from karaoke.config import (
    ExperimentConfig,
    apply_overrides,
    config_digest,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from karaoke.errors import ConfigError

REPO_CONFIGS = ["demo", "mir1k", "paper"]


def test_defaults_are_the_paper():
    config = config_from_dict({})
    assert config.stft.n_bins == 1025
    assert config.n_inputs == 20500
    assert config.hidden_sizes == (20500,)
    assert (config.train.learning_rate, config.train.momentum, config.train.batch_size, config.train.epochs) == (
        0.1,
        0.5,
        100,
        100,
    )
    assert config.dnn.bias_offset == 6.0
    assert config.nmf.n_components == 1500
    assert config.evaluation.alphas[0] == 0.1 and config.evaluation.alphas[-1] == 0.9
    assert len(config.evaluation.alphas) == 17


@pytest.mark.parametrize("name", REPO_CONFIGS)
def test_repo_configs_load_and_round_trip(name, tmp_path):
    config = load_config(f"configs/{name}.yaml")
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config
    assert config_from_dict(config_to_dict(config)) == config


@pytest.mark.parametrize(
    "data, key",
    [
        ({"trian": {"epochs": 3}}, "trian: unknown key"),
        ({"train": {"lr": 0.1}}, "train.lr: unknown key"),
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"train": {"learning_rate": -1}}, "train.learning_rate"),
        ({"stft": {"n_fft": 512, "hop_length": 1024}}, "hop_length"),
        ({"evaluation": {"alpha": 1.0}}, "evaluation.alpha"),
        ({"evaluation": {"alphas": [0.5, 0.0]}}, "evaluation.alphas.1"),
        ({"corpus": {"layout": "napster"}}, "corpus.layout"),
        ({"train": {"loss": "hinge"}}, "train.loss"),
        ([1, 2], "mapping"),
    ],
)
def test_bad_configs_name_the_key(data, key):
    with pytest.raises(ConfigError, match="bad.yaml") as info:
        config_from_dict(data, source="bad.yaml")
    assert key in str(info.value)


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain: {epochs: 5}\n")
    config = load_config(path, ["train.epochs=3", "dnn.hidden_sizes=[32, 16]", "resources.dnn.use_gpu=true"])
    assert config.train.epochs == 3
    assert config.hidden_sizes == (32, 16)
    assert config.resources.dnn.use_gpu is True
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["train.epochs"])


def test_configs_are_frozen_and_digest_tracks_sections():
    config = ExperimentConfig()
    with pytest.raises(Exception):
        config.train.epochs = 3
    other = config_from_dict({"train": {"epochs": 3}})
    assert config_digest(config, "dnn", "stft") == config_digest(other, "dnn", "stft")
    assert config_digest(config, "train") != config_digest(other, "train")
