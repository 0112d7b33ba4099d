"""The batch loop of `karaoke separate`: every input file through `karaoke.Separator.separate_file`
into OUT/<model>/<track>/, a progress bar per file; a bad file is reported and skipped."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from karaoke.separator import Separator

SOME_FAILED = 1  # exit status when some files failed (usage, model and config errors exit 2)


def separate_files(
    inputs: Iterable[str],
    separator: Separator,
    out_dir: str | Path,
    audio_format: str = "wav",
    bit_depth: str | None = None,
    progress: bool = False,
) -> int:
    """Separate every input file (folders are searched for audio) into
    `out_dir/<separator.name>/<track>/` (`karaoke.tracks.track_names`). A file that cannot be read
    or written is reported on stderr (its name and the reason) and skipped; the model's config is
    saved beside the tracks once one is written. Prints a summary; returns the exit status: 0, or
    `SOME_FAILED` when any file failed."""
    from tqdm import tqdm

    from karaoke.audio import output_format
    from karaoke.config import save_config
    from karaoke.errors import AudioError, OutputError
    from karaoke.separate import audio_info
    from karaoke.tracks import input_files, track_names

    output_format(audio_format, bit_depth)  # a bad flag is refused before any work
    files = input_files(inputs)
    folder = Path(out_dir) / separator.name
    failed: list[Path] = []
    for path, track in zip(files, track_names(files)):
        try:
            info = audio_info(path)
            # counted in samples, shown in seconds of audio
            bar = tqdm(
                total=info.frames, unit_scale=1 / info.samplerate, desc=path.name, disable=not progress,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]",
            )
            with bar:
                target = separator.separate_file(path, folder / track, audio_format, bit_depth, on_block=bar.update)
        except (AudioError, OutputError) as exc:
            failed.append(path)
            click.echo(f"failed: {exc}", err=True)
            continue
        click.echo(f"wrote {target}")
    written = len(files) - len(failed)
    if written:
        save_config(separator.config, folder / "config.yaml")
    summary = f"separated {written} of {len(files)} file{'s' * (len(files) != 1)} into {folder}"
    click.echo(summary + (f"; {len(failed)} failed (listed above)" if failed else ""), err=bool(failed))
    return SOME_FAILED if failed else 0
