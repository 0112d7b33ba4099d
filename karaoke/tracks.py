"""The songs of a `karaoke separate` batch and the output folder of each.

Inputs are files and folders (searched for audio). Each song's track name is its path below the
inputs' common folder, without the extension: `a/song.wav b/song.wav` give tracks `a/song` and
`b/song`, `music/` gives `x`, `live/y` for music/x.flac and music/live/y.wav, and one file gives
its stem. Files of one folder that differ only in their extension (song.wav, song.flac) keep it in
the name (`song_wav`, `song_flac`), so no two inputs share an output folder.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from karaoke.audio import AUDIO_EXTENSIONS, is_audio_file
from karaoke.errors import AudioError


def input_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The audio files of the command's arguments, each once: files as given, folders searched
    (recursively, sorted) for audio files. `AudioError` for a missing path or a folder without audio."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and is_audio_file(p.name))
            if not found:
                raise AudioError(f"{item}: folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise AudioError(f"{item}: no such file or folder")
    seen: set[str] = set()
    unique = []
    for path in files:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def track_names(files: list[Path]) -> list[str]:
    """Each file's track name (module docstring), a relative POSIX path, unique across `files`."""
    if not files:
        return []
    absolute = [Path(os.path.abspath(p)) for p in files]
    root = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    stems = [p.relative_to(root).with_suffix("").as_posix() for p in absolute]
    counts = Counter(stems)
    return [
        f"{stem}_{path.suffix.lstrip('.')}" if counts[stem] > 1 else stem
        for stem, path in zip(stems, absolute)
    ]
