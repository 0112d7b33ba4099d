"""The batch loop of `karaoke separate`: every input file through `karaoke.separate.separate_file`
with one DNN, a progress bar per file."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator


def input_files(inputs: Iterable[str]) -> list[Path]:
    """The audio files of the command's arguments: files as given, folders searched for audio."""
    from karaoke.audio import is_audio_file
    from karaoke.errors import AudioError

    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and is_audio_file(p.name))
            if not found:
                raise AudioError(f"{item}: folder holds no audio files ({', '.join(('.wav', '.flac', '...'))})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise AudioError(f"{item}: no such file or folder")
    return files


def separate_files(
    inputs: Iterable[str],
    model_dir: str | Path,
    alpha: float,
    out_dir: str | Path,
    chunk_seconds: float = 30.0,
    progress: bool = False,
    precision: str = "float32",
) -> Iterator[Path]:
    """`karaoke separate`: every file (folders are searched for audio) with a DNN checkpoint (or the
    last one of a training run directory); runs on the GPU when there is one. Yields each output
    folder; the model's config is saved in `out_dir`."""
    from tqdm import tqdm

    from karaoke.checkpoint import resolve_checkpoint
    from karaoke.config import save_config
    from karaoke.errors import ConfigError
    from karaoke.masks import check_alpha
    from karaoke.models.dnn import load_dnn, pick_device
    from karaoke.separate import audio_info, make_folder, separate_file

    try:
        alpha = check_alpha(alpha)
    except ValueError as exc:
        raise ConfigError(f"--alpha: {exc}") from None
    files = input_files(inputs)
    model, config, _ = load_dnn(resolve_checkpoint(model_dir), device=pick_device())
    make_folder(Path(out_dir))
    save_config(config, Path(out_dir) / "config.yaml")
    for path in files:
        info = audio_info(path)
        seconds = info.frames / info.samplerate
        with tqdm(total=round(seconds, 1), unit="s", desc=path.name, disable=not progress) as bar:
            yield separate_file(
                path, model, config, alpha, out_dir, chunk_seconds,
                on_block=lambda n: bar.update(round(n / config.corpus.sample_rate, 1)), precision=precision,
            )
