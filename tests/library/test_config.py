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
    assert config.evaluation.alphas == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


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


@pytest.mark.parametrize("override, key", [("train.learning_rate=.inf", "train.learning_rate"), ("dnn.bias_offset=.nan", "dnn.bias_offset")])
def test_non_finite_values_are_refused_naming_file_and_key(tmp_path, override, key):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError, match=rf"^{path}: invalid config: {key}: Input should be a finite number"):
        load_config(path, [override])


def test_a_top_level_list_and_a_duplicate_key_are_one_line_errors(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- train\n- dnn\n")
    for overrides in ((), ("train.epochs=2",)):
        with pytest.raises(ConfigError, match=rf"^{listed}: a config is a mapping of sections .* got a list$"):
            load_config(listed, overrides)
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=rf"^{twice}: key 'epochs' is given twice \(line 3\); keep one$"):
        load_config(twice)
    # the same key in two different sections is not a duplicate
    (tmp_path / "ok.yaml").write_text("train: {seed: 1}\nnmf: {seed: 2}\n")
    assert load_config(tmp_path / "ok.yaml").nmf.seed == 2


def test_machine_resources_are_outside_every_models_digest(tmp_path):
    from karaoke.config import CHECKPOINT_SECTIONS, STAGE_SECTIONS

    path = tmp_path / "c.yaml"
    path.write_text("name: x\n")
    one, two = load_config(path), load_config(path, ["resources.dnn.num_workers=4", "resources.nmf.use_gpu=true"])
    assert one.resources != two.resources
    for sections in (*STAGE_SECTIONS.values(), *CHECKPOINT_SECTIONS.values()):
        assert "resources" not in sections
        assert config_digest(one, *sections) == config_digest(two, *sections)


def test_nmf_test_time_keys_rescore_without_refitting_the_bases(tmp_path):
    from karaoke.config import STAGE_SECTIONS

    path = tmp_path / "c.yaml"
    path.write_text("name: x\n")
    base = load_config(path)
    for change in (["nmf.test_iterations=7"], ["nmf.test_precision=bfloat16"], ["nmf.test_tolerance=0.001"]):
        other = load_config(path, change)
        assert config_digest(base, *STAGE_SECTIONS["nmf"]) == config_digest(other, *STAGE_SECTIONS["nmf"])
        assert config_digest(base, *STAGE_SECTIONS["evaluate"]) != config_digest(other, *STAGE_SECTIONS["evaluate"])
    refit = load_config(path, ["nmf.seed=3"])
    assert config_digest(base, *STAGE_SECTIONS["nmf"]) != config_digest(refit, *STAGE_SECTIONS["nmf"])
