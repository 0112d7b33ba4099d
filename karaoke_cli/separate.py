"""The batch loop of `karaoke separate`: every input file (local or URL) through
`karaoke.Separator.separate_file` into OUT/<model>/<track>/, in this process with a progress bar
per file, or on `jobs` Ray replicas (`pipelines.separate`) with one bar over all songs; a bad file
is reported and skipped."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from karaoke.separator import Separator

SOME_FAILED = 1  # exit status when some files failed (usage, model and config errors exit 2)


def _below(base: str | Path, *parts: str) -> str | Path:
    """`base/part/...`: a Path for a local folder (printed as today), a string for a URL."""
    from karaoke.storage import is_url, join

    return join(base, *parts) if is_url(base) else Path(base).joinpath(*parts)


def separate_files(
    inputs: Iterable[str],
    separator: Separator,
    out_dir: str | Path,
    audio_format: str = "wav",
    bit_depth: str | None = None,
    progress: bool = False,
    jobs: int = 1,
    options: dict[str, Any] | None = None,
) -> int:
    """Separate every input file (folders and URL prefixes are searched for audio) into
    `out_dir/<separator.name>/<track>/` (`karaoke.tracks.track_names`; `out_dir` a folder or URL).
    With `jobs` > 1 the songs go to that many Ray replicas, each loading its own Separator from
    `options` (`Separator.from_pretrained`'s keyword arguments). A file that cannot be read or
    written is reported on stderr (its name and the reason) and skipped; the model's config is
    saved beside the tracks once one is written. Prints a summary; returns the exit status: 0, or
    `SOME_FAILED` when any file failed."""
    from karaoke.audio import output_format
    from karaoke.config import save_config
    from karaoke.tracks import input_files, track_names

    output_format(audio_format, bit_depth)  # a bad flag is refused before any work
    files = input_files(inputs)
    folder = _below(out_dir, separator.name)
    songs = list(zip(files, track_names(files)))
    if jobs == 1:
        outcomes = _in_process(songs, separator, folder, audio_format, bit_depth, progress)
    else:
        outcomes = _on_ray(songs, folder, options or {}, audio_format, bit_depth, jobs, progress)
    failed = 0
    for _, track, error in outcomes:
        if error is None:
            click.echo(f"wrote {_below(folder, track)}")
        else:
            failed += 1
            click.echo(f"failed: {error}", err=True)
    written = len(files) - failed
    if written:
        save_config(separator.config, _below(folder, "config.yaml"))
    summary = f"separated {written} of {len(files)} file{'s' * (len(files) != 1)} into {folder}"
    click.echo(summary + (f"; {failed} failed (listed above)" if failed else ""), err=bool(failed))
    return SOME_FAILED if failed else 0


def _in_process(
    songs: list[tuple[str, str]], separator: Separator, folder: str | Path, audio_format: str, bit_depth: str | None, progress: bool
) -> Iterator[tuple[str, str, str | None]]:
    """(path, track, None or the error's line) of each song as this process separates it."""
    from tqdm import tqdm

    from karaoke.errors import AudioError, OutputError
    from karaoke.separate import audio_info

    for path, track in songs:
        try:
            info = audio_info(path)
            # counted in samples, shown in seconds of audio
            bar = tqdm(
                total=info.frames, unit_scale=1 / info.samplerate, desc=Path(path).name, disable=not progress,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]",
            )
            with bar:
                separator.separate_file(path, _below(folder, track), audio_format, bit_depth, on_block=bar.update)
        except (AudioError, OutputError) as exc:
            yield path, track, str(exc)
            continue
        yield path, track, None


def _on_ray(
    songs: list[tuple[str, str]], folder: str | Path, options: dict[str, Any], audio_format: str, bit_depth: str | None,
    jobs: int, progress: bool,
) -> list[tuple[str, str, str | None]]:
    """(path, track, None or the error's line) of each song, in input order, once `jobs` Ray
    replicas have separated them all; one progress bar counts the songs as they finish."""
    from tqdm import tqdm

    from pipelines.ray_runtime import connect
    from pipelines.separate import separate_on_ray

    connect()
    rows = separate_on_ray(songs, str(folder), options, audio_format, bit_depth, jobs)  # refuses before the bar
    errors: dict[str, str | None] = {}
    with tqdm(total=len(songs), unit="song", desc="separating", disable=not progress) as bar:
        for row in rows:
            errors[row["track"]] = row["error"]
            bar.update(1)
    return [(path, track, errors[track]) for path, track in songs]
