"""`karaoke` command line. Heavy imports live inside the commands so that `--help` is instant."""

from __future__ import annotations

import math
import sys

import click

from karaoke import __version__
from karaoke.errors import KaraokeError


class _Group(click.Group):
    """Prints a `KaraokeError` as one line (it names the file or key and the fix) and exits 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KaraokeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


class _Finite(click.ParamType):
    """A finite float inside an open interval: click's FloatRange lets NaN through."""

    name = "number"

    def __init__(self, low: float, high: float = math.inf) -> None:
        self.low, self.high = low, high

    def convert(self, value, param, ctx) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not (math.isfinite(number) and self.low < number < self.high):
            accepted = f"> {self.low:g}" if math.isinf(self.high) else f"strictly between {self.low:g} and {self.high:g}"
            self.fail(f"{value!r} is not a finite number {accepted}", param, ctx)
        return number


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="karaoke")
def main() -> None:
    """Deep Karaoke: separate vocals from music with a mask-predicting DNN (Simpson et al. 2015)."""


config_option = click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Experiment YAML (see configs/)."
)
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value, e.g. train.epochs=3."
)


def _set_verbose(ctx, param, value: bool) -> bool:
    from pipelines.ray_runtime import set_verbose

    set_verbose(value)
    return value


verbose_option = click.option(
    "--verbose", is_flag=True, expose_value=False, callback=_set_verbose,
    help="Show Ray's own log lines and the workers' output (otherwise only this command's progress).",
)


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--songs", default=12, show_default=True, help="Number of songs.")
@click.option("--seed", default=0, show_default=True, help="Seed: the same seed gives the same songs.")
@click.option("--seconds", default=20.0, show_default=True, help="Length of each song.")
@click.option("--sample-rate", default=16000, show_default=True, help="Sample rate of the stems.")
def synth(out: str, songs: int, seed: int, seconds: float, sample_rate: int) -> None:
    """Write a deterministic synthetic multitrack corpus (a stems folder) to OUT."""
    from karaoke.corpora.synth import write_synth_corpus

    write_synth_corpus(out, songs, seed, seconds, sample_rate, progress=True)
    click.echo(f"wrote {songs} songs to {out}")


@main.command()
@verbose_option
@config_option
@set_option
@click.option("--out", "run_dir", default=None, help="Run directory, a folder or s3:// URL (default runs/<config name>).")
def run(config_path: str, overrides: tuple[str, ...], run_dir: str | None) -> None:
    """Prepare, train DNN and NMF, choose alpha, evaluate and report, into one run directory
    (a folder or s3:// URL). Rerunning resumes: finished stages are checked and skipped."""
    from karaoke.config import load_config
    from pipelines.run import run_experiment

    config = load_config(config_path, overrides)
    run_experiment(config, run_dir or f"runs/{config.name}")


@main.command()
@verbose_option
@config_option
@set_option
@click.option("--out", "dataset", required=True, help="Dataset folder to write: a local path or s3://bucket/prefix.")
@click.option("--strict", is_flag=True, help="Stop at the first song that fails instead of recording it.")
def prepare(config_path: str, overrides: tuple[str, ...], dataset: str, strict: bool) -> None:
    """Prepare a corpus into Parquet shards with Ray Data.

    Exit status: 0 every song prepared; 1 some songs failed (each listed, the others written);
    2 a usage, config or storage error (one line naming the file or key)."""
    from karaoke.config import load_config
    from pipelines.prepare import prepare_job

    sys.exit(prepare_job(load_config(config_path, overrides), dataset, strict))


@main.command("check-config")
@config_option
@set_option
def check_config(config_path: str, overrides: tuple[str, ...]) -> None:
    """Validate a config and print it resolved (all defaults filled in)."""
    import yaml

    from karaoke.config import config_to_dict, load_config

    click.echo(yaml.safe_dump(config_to_dict(load_config(config_path, overrides)), sort_keys=False))


data_option = click.option(
    "--data", "dataset", required=True, help="Prepared dataset (folder or s3:// URL, see `karaoke prepare`)."
)
resume_option = click.option("--resume", is_flag=True, help="Continue from the run directory's last checkpoint.")


@main.group()
def train() -> None:
    """Train a separation model on a prepared dataset."""


@train.command("dnn")
@verbose_option
@config_option
@set_option
@data_option
@click.option("--out", "run_dir", required=True, help="Run directory for checkpoints and metrics (folder or s3:// URL).")
@resume_option
def train_dnn_command(config_path: str, overrides: tuple[str, ...], dataset: str, run_dir: str, resume: bool) -> None:
    """Train the paper's mask DNN data-parallel on Ray Train; a checkpoint every epoch."""
    from karaoke.config import load_config
    from pipelines.train_dnn import train_dnn

    result = train_dnn(load_config(config_path, overrides), dataset, run_dir, resume=resume)
    click.echo(f"last checkpoint: {result.checkpoint_path}  metrics: {result.metrics}")


@train.command("nmf")
@verbose_option
@config_option
@set_option
@data_option
@click.option("--out", "run_dir", required=True, help="Run directory for the bases, objective and checkpoints (folder or s3:// URL).")
@resume_option
def train_nmf_command(config_path: str, overrides: tuple[str, ...], dataset: str, run_dir: str, resume: bool) -> None:
    """Learn the NMF baseline's vocal and accompaniment bases as distributed KL-NMF on Ray Train."""
    from karaoke.config import load_config
    from pipelines.train_nmf import train_nmf

    bases = train_nmf(load_config(config_path, overrides), dataset, run_dir, resume=resume)
    click.echo(f"NMF bases: {bases}  objective per iteration: {bases.rsplit('/', 1)[0]}/objective.json")


@main.command("tune")
@verbose_option
@config_option
@set_option
@click.option("--data", "dataset", required=True, help="Prepared dataset with validation songs (folder or s3:// URL).")
@click.option("--out", "out_dir", required=True, help="Output folder or s3:// URL (RUN/tune): Tune logs, results, best/.")
def tune_command(config_path: str, overrides: tuple[str, ...], dataset: str, out_dir: str) -> None:
    """Sweep the config's tune.search_space with Ray Tune; every trial is scored over the alpha grid."""
    from karaoke.config import load_config
    from pipelines.tune import tune_experiment

    outcome = tune_experiment(load_config(config_path, overrides), dataset, out_dir)
    click.echo(f"best checkpoint: {outcome.best_checkpoint}  results: {outcome.results}")


@main.command()
@verbose_option
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "-m", "--model", default=None, metavar="MODEL",
    help="A model name (see `karaoke models`; default: the shipped mir1k), a checkpoint or exported folder, "
    "a training run folder (its last epoch), or a URL (https://, http://, s3://) downloaded once into the cache.",
)
@click.option("-o", "--out", "out_dir", default="separated", show_default=True, type=click.Path(file_okay=False), help="Output folder or s3:// URL.")
@click.option("-d", "--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Where the network runs (default: the GPU when there is one).")
@click.option("--format", "audio_format", type=click.Choice(["wav", "flac", "mp3"]), default="wav", show_default=True, help="Output file format.")
@click.option("--bit-depth", type=click.Choice(["16", "24", "32f"]), default=None, help="Output samples (default: 32f for wav, 24 for flac; none for mp3).")
@click.option("--mask", type=click.Choice(["binary", "soft"]), default=None, help="Eq. 2's binary masks at --alpha, or soft masks p and 1 - p (default: the model's).")
@click.option("--alpha", default=None, type=_Finite(0.0, 1.0), help="Mask threshold of Eq. 2, in (0, 1), binary masks only (default: the model's).")
@click.option("--chunk-seconds", default=30.0, show_default=True, type=_Finite(0.0), help="Audio processed at once (bounds memory).")
@click.option(
    "--precision",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="Network arithmetic on CPU; bfloat16 is ~2x faster on AVX512-BF16 CPUs (GPUs always use it).",
)
@click.option(
    "-j", "--jobs", default=1, show_default=True, type=click.IntRange(min=1),
    help="Songs separated at once, on Ray: each of N model replicas takes 1/N of the CPUs (one GPU each with -d cuda).",
)
def separate(
    inputs: tuple[str, ...], model: str | None, out_dir: str, device: str | None, audio_format: str,
    bit_depth: str | None, mask: str | None, alpha: float | None, chunk_seconds: float, precision: str, jobs: int,
) -> None:
    """Separate audio files (or folders of them, local or s3:// prefixes) into
    OUT/<model>/<track>/vocals.<ext> and accompaniment.<ext>, at each input's sample rate, channel
    count and length.

    Exit status: 0 every file separated; 1 some files failed (each listed with the reason, the
    others written); 2 a usage, model or config error (one line naming the fix)."""
    from karaoke.audio import output_format
    from karaoke.separator import Separator
    from karaoke_cli.separate import separate_files

    output_format(audio_format, bit_depth)
    options = {"name_or_path": model, "device": device, "mask": mask, "alpha": alpha, "precision": precision, "chunk_seconds": chunk_seconds}
    # With -j the replicas hold the network; the driver's copy only checks the model and flags and
    # names the output folder, so it stays on the CPU (the GPU check is against the Ray cluster).
    separator = Separator.from_pretrained(**{**options, "device": device if jobs == 1 else "cpu"})
    sys.exit(separate_files(inputs, separator, out_dir, audio_format, bit_depth, progress=True, jobs=jobs, options=options))


@main.command()
@click.argument("source")
@click.option("--name", required=True, help="The model's name: its folder, and what `--model NAME` finds.")
@click.option("--out", "out_dir", default=".", show_default=True, type=click.Path(file_okay=False), help="Folder to write OUT/NAME/ in.")
@click.option("--description", default=None, help="One line for `karaoke models` (default: the network, masks and training data).")
def export(source: str, name: str, out_dir: str, description: str | None) -> None:
    """Make a shippable model from SOURCE (a training run folder, its last epoch, or a checkpoint
    folder or URL): float16 weights and a card with the config, training data and digest."""
    from karaoke.model_store import export_model

    click.echo(f"wrote {export_model(source, name, out_dir, description)}")


@main.command()
def models() -> None:
    """List the models `--model NAME` finds: shipped with the package, and downloaded into the cache."""
    from karaoke.model_store import available_models, cache_folder, shipped_folder

    found = available_models()
    if not found:
        click.echo(f"no models in {shipped_folder()} or {cache_folder() / 'models'}; make one with `karaoke export`")
    for model in found:
        click.echo(f"{model.name}\t{model.origin}\t{model.description}")


@main.command()
@verbose_option
@config_option
@set_option
@click.option("--out", "run_dir", required=True, help="Run directory, folder or s3:// URL (scores go to OUT/scores/).")
@click.option("--dataset", default=None, help="Prepared dataset (default: the config's corpus).")
@click.option("--dnn", "dnn", multiple=True, help="DNN checkpoint folder or s3:// URL (repeatable).")
@click.option("--nmf", "nmf", multiple=True, help="NMF bases folder or s3:// URL (repeatable).")
@click.option("--ibm/--no-ibm", default=True, show_default=True, help="Also score the ideal binary mask.")
def evaluate(
    config_path: str, overrides: tuple[str, ...], run_dir: str, dataset: str | None, dnn: tuple[str, ...], nmf: tuple[str, ...], ibm: bool
) -> None:
    """Score checkpoints (and the IBM) over the alpha grid on evaluation.split, in parallel Ray tasks."""
    from karaoke.config import load_config
    from pipelines.evaluate import evaluate_on_ray, parse_methods

    config = load_config(config_path, overrides)
    click.echo(f"wrote {evaluate_on_ray(config, run_dir, parse_methods(list(dnn), list(nmf), ibm), dataset)}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def report(run_dir: str) -> None:
    """Figures 1-3 and report.md in RUN_DIR/report/ from RUN_DIR/scores/scores.parquet (or .csv)."""
    from karaoke.report import write_report

    click.echo(f"wrote {write_report(run_dir)}")

