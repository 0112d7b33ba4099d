"""Experiment configuration: frozen dataclasses loaded from YAML and validated.

One module for every key (over 300 lines for that reason): a reader finds each section, its
defaults and its checks in one place, and the sections each output depends on are declared here once.

Every section has the paper's values as defaults (Simpson, Roma, Plumbley 2015), so an empty YAML
file describes the paper's experiment; `configs/*.yaml` override what differs. Validation is done by
pydantic: unknown keys, wrong types and impossible values are a `ConfigError` naming the file and key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field
from pydantic.dataclasses import dataclass

from karaoke.errors import ConfigError

# Unknown keys are typos, and inf/nan are never a meaningful setting.
_STRICT = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Alpha = Annotated[float, Field(gt=0, lt=1)]

Layout = Literal["synth", "stems", "musdb", "medleydb", "mir1k"]
Split = Literal["train", "valid", "test"]


@dataclass(frozen=True, config=_STRICT)
class CorpusConfig:
    """Where the songs come from and how their stems become a mixture.

    `mixing: paper` peak-normalises every stem, sums them into a vocal and an accompaniment signal,
    peak-normalises each and adds them (Sec. 3 of the paper); `mixing: sum` adds the stems as they are
    (the MIR-1K convention of an equal-level mix of the two channels).
    """

    layout: Layout = "synth"
    root: str = "corpus"
    sample_rate: PositiveInt = 44100
    mixing: Literal["paper", "sum"] = "paper"
    # Layouts without split folders (medleydb, stems without train/test) hold out these fractions,
    # chosen by a hash of the song id so that adding songs never moves an existing one.
    valid_fraction: Fraction = 0.0
    test_fraction: Fraction = 0.3
    # MIR-1K splits by singer: these singers train, `valid_singers` validate, the rest test.
    train_singers: tuple[str, ...] = ("abjones", "amy")
    valid_singers: tuple[str, ...] = ("Ani", "annar", "ariel", "bobon")
    # The synthetic corpus is generated into `root` when it does not exist yet.
    synth_songs: PositiveInt = 12
    synth_seconds: PositiveFloat = 20.0
    synth_seed: int = 0


@dataclass(frozen=True, config=_STRICT)
class StftConfig:
    """Short-time Fourier transform: 2048-point Hann windows every 512 samples give 1025 bins."""

    n_fft: Annotated[int, Field(ge=16)] = 2048
    hop_length: PositiveInt = 512

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    def __post_init__(self) -> None:
        if self.hop_length > self.n_fft:
            raise ValueError(f"stft.hop_length ({self.hop_length}) must not exceed stft.n_fft ({self.n_fft})")


@dataclass(frozen=True, config=_STRICT)
class WindowConfig:
    """The network sees `n_frames` consecutive frames; training windows start every `train_hop` frames."""

    n_frames: PositiveInt = 20
    train_hop: PositiveInt = 60
    # Beyond the paper (0 = off): each training song adds `remixes` copies of its voice over another
    # training song's accompaniment, the voice at a random gain within +-`remix_gain_db` dB (seeded
    # by `remix_seed` and the song id, so a rerun cuts the same windows).
    remixes: Annotated[int, Field(ge=0)] = 0
    remix_gain_db: Annotated[float, Field(ge=0)] = 6.0
    # > 0: each remixed voice is also pitch-shifted by a random amount within +-this many semitones
    # (resampled: formants move with it), for singers beyond the few of a training set.
    remix_pitch_semitones: Annotated[float, Field(ge=0, le=12)] = 0.0
    remix_seed: int = 0


@dataclass(frozen=True, config=_STRICT)
class DnnConfig:
    """Mask network: n_bins*n_frames -> hidden layers with sigmoid(x - bias_offset) -> sigmoid output.

    The paper's network has one hidden layer as wide as its input (20500 -> 20500 -> 20500).
    `hidden_sizes: []` means "as wide as the input", so the default is the paper's size at any STFT.
    """

    hidden_sizes: tuple[PositiveInt, ...] = ()
    n_hidden_layers: PositiveInt = 1
    bias_offset: float = 6.0
    # The learned per-unit hidden biases' starting value (PyTorch's default initialisation when 0).
    # `bias_offset` here starts each unit at sigmoid(0) = 0.5 instead of sigmoid(-offset), where its
    # gradient is 1 / 400 of that at 0.5 and training stalls.
    hidden_bias_init: float = 0.0
    # Beyond the paper: 0 feeds the unit-scale magnitudes x as they are (the paper); g > 0 feeds
    # log1p(g x) / log1p(g), still in [0, 1] but with quiet bins no longer crushed towards 0.
    log_input_gain: Annotated[float, Field(ge=0)] = 0.0
    # Beyond the paper (0 = off): dropout on the hidden units while training, against overfitting the
    # few singers of a small training set.
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # Beyond the paper ("dense"): "conv" adds a convolutional branch beside the dense layers, its
    # logits added to theirs (karaoke/models/conv.py). Its filters slide along frequency with the
    # window's frames as channels, so a pattern learnt at one pitch is recognised at another: the
    # dense layers alone see each bin as a separate input, which fits the few training singers' ranges.
    architecture: Literal["dense", "conv"] = "dense"
    conv_channels: PositiveInt = 32
    conv_layers: PositiveInt = 6


@dataclass(frozen=True, config=_STRICT)
class TrainConfig:
    """The authors' recipe: squared error, SGD lr 0.1, momentum 0.5, batch 100, 100 epochs."""

    loss: Literal["mse", "bce", "discriminative"] = "mse"
    # Beyond the paper ("ibm"): "ratio" trains mse or bce towards |V| / (|V| + |A|) instead of the IBM.
    target: Literal["ibm", "ratio"] = "ibm"
    # "mean": the loss is averaged over a window's n_bins * T outputs; "sum" adds them, as the
    # squared error E = sum_i (y_i - t_i)^2 of classic backpropagation does: at a given learning
    # rate its steps are n_bins * T times larger (20500 at the paper's size).
    reduction: Literal["mean", "sum"] = "mean"
    # The weight of the other source's error in `loss: discriminative` (Huang et al. 2014 use 0.05).
    discriminative_weight: Annotated[float, Field(ge=0, lt=0.5)] = 0.05
    # Beyond the paper (0 = off): each bin's loss weighted by its mixture magnitude to this power
    # (weights normalised to mean 1 in a batch). SDR counts a mask error in proportion to the bin's
    # energy, while an unweighted loss spends the network on the many near-silent bins.
    bin_weight_power: Annotated[float, Field(ge=0, le=2)] = 0.0
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: PositiveFloat = 0.1
    # Beyond the paper ("constant"): "cosine" decays the rate from learning_rate towards 0 over the epochs.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.5
    batch_size: PositiveInt = 100
    epochs: PositiveInt = 100
    seed: int = 0


@dataclass(frozen=True, config=_STRICT)
class NmfConfig:
    """KL-divergence NMF baseline: `n_components` bases per class (1500 in the paper)."""

    n_components: PositiveInt = 1500
    # 0: every training window of the dataset (the DNN's). k: only windows starting at a multiple of
    # k frames, e.g. the paper's 60 when the DNN's windows are denser (`windows.train_hop`) or
    # remixed: the fit's time and memory grow with its number of windows.
    train_hop: Annotated[int, Field(ge=0)] = 0
    # False: fit only the songs' own windows, not their remixes (`windows.remixes`, a DNN
    # augmentation beyond the paper): the fit's time grows with its number of windows.
    train_remixes: bool = True
    train_iterations: PositiveInt = 200
    test_iterations: PositiveInt = 100
    # Test-time fit, beyond the paper when set. test_tolerance t > 0: each window's activations stop
    # once its KL divergence fell by less than a fraction t over 5 iterations (0: all
    # `test_iterations`, the paper). test_precision "bfloat16": the fit's matrix products in
    # bfloat16 ("float32": the paper's result). Speed and score effects: docs/benchmarks.md.
    test_tolerance: Annotated[float, Field(ge=0)] = 0.0
    test_precision: Literal["float32", "bfloat16"] = "float32"
    seed: int = 0
    checkpoint_every: PositiveInt = 10


def _default_alphas() -> tuple[float, ...]:
    return tuple(round(0.1 * i, 1) for i in range(1, 10))


@dataclass(frozen=True, config=_STRICT)
class EvaluationConfig:
    """BSS-EVAL scoring: the alpha grid swept, the alpha reported, and the split scored."""

    alphas: tuple[Alpha, ...] = Field(default_factory=_default_alphas)
    alpha: Alpha = 0.5
    split: Split = "test"
    # The mask a separation applies: "binary", the paper's Eq. 2; "soft" (beyond the paper), the
    # masks p and 1 - p themselves, alpha ignored (`karaoke.masks.alpha_masks`). Evaluation always
    # sweeps the binary masks over `alphas` (the paper's Figs. 2 and 3) and, with "soft", also
    # scores the soft masks once.
    mask: Literal["binary", "soft"] = "binary"


# What defines each output, declared once. A prepared dataset depends on these sections:
DATA_SECTIONS = ("corpus", "stft", "windows")
# What a model sees: its input windows are cut with these sections.
WINDOW_SECTIONS = ("stft", "windows")
# A checkpoint loads only into a config that agrees with it on these (they fix its tensors' shapes):
CHECKPOINT_SECTIONS = {"dnn": (*WINDOW_SECTIONS, "dnn"), "nmf": WINDOW_SECTIONS}
# The NMF keys its bases depend on; the test-time ones (test_iterations, test_tolerance,
# test_precision) only change how the fixed bases are applied, so they re-score without refitting.
NMF_TRAINING_KEYS = (
    "nmf.n_components", "nmf.train_hop", "nmf.train_remixes", "nmf.train_iterations", "nmf.seed", "nmf.checkpoint_every"
)
# A training run folder holds weights made with these keys (sections or dotted keys): resuming it
# under other values would label one model's weights with another's config, so that is refused.
# `CONTINUABLE_KEYS` may grow on a rerun (more of the same training), see `pipelines.run_stages.guard`.
TRAINING_KEYS = {
    "dnn": (*CHECKPOINT_SECTIONS["dnn"], "train"),
    "nmf": (*CHECKPOINT_SECTIONS["nmf"], "nmf.n_components", "nmf.seed", "nmf.train_hop"),
}
CONTINUABLE_KEYS = {"dnn": ("train.epochs",), "nmf": ("nmf.train_iterations",)}
# Each stage of `karaoke run` depends on these; a change there makes a rerun redo the stage.
STAGE_SECTIONS = {
    "prepare": DATA_SECTIONS,
    "tune": (*DATA_SECTIONS, "dnn", "train", "nmf", "evaluation", "tune"),
    "dnn": (*DATA_SECTIONS, "dnn", "train"),
    "nmf": (*DATA_SECTIONS, *NMF_TRAINING_KEYS),
    "alpha": (*DATA_SECTIONS, "dnn", "train", "nmf", "evaluation"),
    "evaluate": (*DATA_SECTIONS, "dnn", "train", "nmf", "evaluation"),
    "report": (*DATA_SECTIONS, "dnn", "train", "nmf", "evaluation"),
}
# Sections whose values a tune may vary, per model: the dataset (corpus, stft, windows) is prepared once.
TUNABLE_SECTIONS = {"dnn": ("dnn", "train"), "nmf": ("nmf",)}
Criterion = Literal[
    "mean_sdr", "mean_sir", "mean_sar", "vocals_sdr", "vocals_sir", "vocals_sar",
    "accompaniment_sdr", "accompaniment_sir", "accompaniment_sar",
]


@dataclass(frozen=True, config=_STRICT)
class TuneConfig:
    """Hyper-parameter search (`pipelines/tune.py`); `num_samples: 0` (the default) means no tuning.

    `search_space` maps dotted keys of the model's sections (dnn and train, or nmf) to lists of
    choices, e.g. {"train.learning_rate": [0.03, 0.1], "dnn.hidden_sizes": [[256], [512]]}.
    `search: grid` runs every combination `num_samples` times; `random` draws `num_samples` trials
    (seeded by `seed`). Trials are ranked by `criterion`, a score averaged over the validation songs
    at `evaluation.alpha` (higher is better). DNN trials report the validation loss every epoch and
    ASHA stops those that trail after `grace_period` epochs (`scheduler: none` lets all finish).
    Each trial reserves `scoring_tasks` bundles of `scoring_cpus` CPUs for its parallel scoring tasks.
    """

    num_samples: Annotated[int, Field(ge=0)] = 0
    model: Literal["dnn", "nmf"] = "dnn"
    search_space: dict[str, tuple[Any, ...]] = Field(default_factory=dict)
    search: Literal["grid", "random"] = "grid"
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0
    criterion: Criterion = "mean_sdr"
    max_concurrent_trials: PositiveInt = 1
    scoring_tasks: PositiveInt = 2
    scoring_cpus: PositiveFloat = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        sections = {"dnn": DnnConfig, "train": TrainConfig, "nmf": NmfConfig}
        allowed = TUNABLE_SECTIONS[self.model]
        for key, choices in self.search_space.items():
            section, _, name = key.partition(".")
            if section not in allowed or name not in sections[section].__dataclass_fields__:
                raise ValueError(
                    f"tune.search_space: unknown key {key!r}; a {self.model} tune varies keys of the "
                    f"{' and '.join(allowed)} section{'s' * (len(allowed) > 1)}, e.g. {allowed[-1]}.seed"
                )
            if not choices:
                raise ValueError(f"tune.search_space.{key}: give at least one choice")
            for choice in choices:
                try:
                    sections[section](**{name: choice})
                except pydantic.ValidationError as exc:
                    reason = exc.errors()[0]["msg"]
                    raise ValueError(f"tune.search_space.{key}: choice {choice!r} is invalid ({reason})") from None


@dataclass(frozen=True, config=_STRICT)
class WorkerConfig:
    """The Ray Train workers that train one model: machine resources, never part of what defines
    the model (no digest includes them, so changing them never retrains anything)."""

    num_workers: PositiveInt = 1
    use_gpu: bool = False
    # Logical CPUs per worker: below 1 on small machines, or the workers starve the Ray Data read
    # tasks that feed them (they deadlock on a 2-core machine with 2 one-CPU workers).
    cpus_per_worker: PositiveFloat = 0.5
    # Worker-group restarts (each from the last checkpoint) before a run fails; -1 retries forever.
    max_failures: Annotated[int, Field(ge=-1)] = 2
    # Checkpoints kept on disk: the last K, and for the DNN also the best by validation loss
    # (`karaoke.checkpoint.retained_epochs`); the others are deleted as training goes.
    keep_checkpoints: PositiveInt = 2


@dataclass(frozen=True, config=_STRICT)
class ResourcesConfig:
    """Where the DNN's and the NMF's training run (`karaoke.config.WorkerConfig` each)."""

    dnn: WorkerConfig = Field(default_factory=WorkerConfig)
    nmf: WorkerConfig = Field(default_factory=lambda: WorkerConfig(max_failures=1))


@dataclass(frozen=True, config=_STRICT)
class ExperimentConfig:
    name: str = "paper"
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    stft: StftConfig = Field(default_factory=StftConfig)
    windows: WindowConfig = Field(default_factory=WindowConfig)
    dnn: DnnConfig = Field(default_factory=DnnConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    nmf: NmfConfig = Field(default_factory=NmfConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    def __post_init__(self) -> None:
        if self.nmf.train_hop % self.windows.train_hop:
            raise ValueError(
                f"nmf.train_hop ({self.nmf.train_hop}) must be 0 or a multiple of windows.train_hop "
                f"({self.windows.train_hop}): the dataset only has windows every {self.windows.train_hop} frames"
            )

    @property
    def n_inputs(self) -> int:
        """Length of an unpacked window: n_bins * n_frames (20500 at paper size)."""
        return self.stft.n_bins * self.windows.n_frames

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return self.dnn.hidden_sizes or (self.n_inputs,) * self.dnn.n_hidden_layers


_ADAPTER = pydantic.TypeAdapter(ExperimentConfig)


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    """Validate a nested dict (as read from YAML) into an `ExperimentConfig`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config is a mapping of sections, got {type(data).__name__}")
    try:
        return _ADAPTER.validate_python(data)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"]) or "<top>"
            unknown = err["type"] in ("extra_forbidden", "unexpected_keyword_argument")
            msg = "unknown key" if unknown else err["msg"]
            if "input" in err and not unknown:
                msg += f" (got {err['input']!r})"
            problems.append(f"{key}: {msg}")
        raise ConfigError(f"{source}: invalid config: " + "; ".join(problems)) from None


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """Plain JSON/YAML-safe dict; `config_from_dict(config_to_dict(c)) == c`."""
    return _ADAPTER.dump_python(config, mode="json")


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as YAML) to a nested config dict."""
    data = json.loads(json.dumps(data or {}))
    if not isinstance(data, dict):
        raise ConfigError(f"a config is a mapping of sections, got {type(data).__name__}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.epochs=3")
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[leaf] = _load_yaml(raw, f"override {item!r}")
    return data


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML config, apply `key=value` overrides and validate it."""

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (see configs/ for examples)")
    data = _load_yaml(path.read_text(), str(path))
    if not isinstance(data, (dict, type(None))):
        raise ConfigError(f"{path}: a config is a mapping of sections (corpus:, train:, ...), got a {type(data).__name__}")
    try:
        return config_from_dict(apply_overrides(data, overrides), source=str(path))
    except ConfigError as exc:
        raise ConfigError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from None


def _load_yaml(text: str, source: str) -> Any:
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"{source}: key {key!r} is given twice (line {key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return loader.construct_mapping(node, deep=True)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (it is saved beside every output) to a local path or an
    s3:// URL, complete or not at all."""
    import yaml

    from karaoke.storage import open_fs, write_atomic

    payload = yaml.safe_dump(config_to_dict(config), sort_keys=False).encode()
    fs, target = open_fs(path)
    write_atomic(fs, target, lambda handle: handle.write(payload))


def config_digest(config: ExperimentConfig, *sections: str) -> str:
    """Short stable hash of some config sections or dotted keys ("nmf.seed"), used to tell outputs
    of other configs apart."""
    data = config_to_dict(config)

    def pick(key: str) -> Any:
        node: Any = data
        for part in key.split("."):
            node = node[part]
        return node

    picked = {name: pick(name) for name in sections} if sections else data
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]

