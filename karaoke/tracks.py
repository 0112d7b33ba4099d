"""The songs of a `karaoke separate` batch and the output folder of each.

Inputs are files and folders (searched for audio), local or URLs (`s3://bucket/prefix` is searched
as a folder is). Each song's track name is its path below the inputs' common folder, without the
extension: `a/song.wav b/song.wav` give tracks `a/song` and `b/song`, `music/` gives `x`, `live/y`
for music/x.flac and music/live/y.wav, and one file gives its stem; `s3://b/music/` names its
songs the same way. Files of one folder that differ only in their extension (song.wav,
song.flac) keep it in the name (`song_wav`, `song_flac`), so no two inputs share an output folder.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from karaoke.audio import AUDIO_EXTENSIONS, is_audio_file
from karaoke.errors import AudioError
from karaoke.storage import is_url, open_fs


def _local_files(item: Path) -> list[str]:
    if item.is_dir():
        found = sorted(p for p in item.rglob("*") if p.is_file() and is_audio_file(p.name))
        if not found:
            raise AudioError(f"{item}: folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
        return [str(p) for p in found]
    if item.is_file():
        return [str(item)]
    raise AudioError(f"{item}: no such file or folder")


def _url_files(url: str) -> list[str]:
    fs, path = open_fs(url)
    protocol = url.split("://", 1)[0]
    try:
        if fs.isfile(path):
            return [url]
        if not fs.exists(path):
            raise AudioError(f"{url}: no such file or folder")
        found = sorted(p for p in fs.find(path) if is_audio_file(p))
    except AudioError:
        raise
    except Exception as exc:  # noqa: BLE001 - any client's failure (connection, permission) is one line
        raise AudioError(f"{url}: cannot list it ({type(exc).__name__}: {exc}); check the URL and its credentials") from None
    if not found:
        raise AudioError(f"{url}: folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return [f"{protocol}://{p}" for p in found]


def input_files(inputs: Iterable[str | Path]) -> list[str]:
    """The audio files of the command's arguments, each once: files as given, folders and URL
    prefixes searched (recursively, sorted) for audio files. `AudioError` for a missing path or a
    folder without audio."""
    unique: dict[PurePosixPath, str] = {}
    for item in map(str, inputs):
        for file in _url_files(item) if is_url(item) else _local_files(Path(item)):
            unique.setdefault(_key(file), file)
    return list(unique.values())


def _key(location: str | Path) -> PurePosixPath:
    """An absolute POSIX path naming a file: a local file's absolute path, `/s3/bucket/key` for a URL."""
    text = str(location)
    if is_url(text):
        protocol, rest = text.split("://", 1)
        return PurePosixPath("/", protocol, rest)
    return PurePosixPath(Path(os.path.abspath(text)).as_posix())


def track_names(files: Sequence[str | Path]) -> list[str]:
    """Each file's track name (module docstring), a relative POSIX path, unique across `files`."""
    if not files:
        return []
    keys = [_key(p) for p in files]
    root = PurePosixPath(os.path.commonpath([str(k.parent) for k in keys]))
    stems = [k.relative_to(root).with_suffix("").as_posix() for k in keys]
    counts = Counter(stems)
    return [
        f"{stem}_{key.suffix.lstrip('.')}" if counts[stem] > 1 else stem
        for stem, key in zip(stems, keys)
    ]
