"""MedleyDB: `Audio/<id>/<id>_METADATA.yaml` describing the stems in `Audio/<id>/<id>_STEMS/`.

A stem is vocal when its `instrument` (a string, or a list of strings) names a voice; every other
stem is accompaniment. Songs without a vocal stem are skipped with a logged reason (they cannot be
separated). A metadata file that names a missing file or a path outside the song folder makes that
song fail when loaded, with the file named.
"""

from __future__ import annotations

import logging
import posixpath

from karaoke.config import CorpusConfig
from karaoke.corpora.base import Song, Stem, hash_split
from karaoke.corpora.fs import Folder
from karaoke.errors import CorpusError

log = logging.getLogger(__name__)

VOCAL_INSTRUMENTS = frozenset(
    {
        "male singer",
        "female singer",
        "male speaker",
        "female speaker",
        "male rapper",
        "female rapper",
        "beatboxing",
        "vocalists",
        "choir",
    }
)


def is_vocal(instrument: str | list[str] | None) -> bool:
    """True when the stem's instrument (or any of a list of them) is a voice."""
    names = instrument if isinstance(instrument, list) else [instrument]
    return any(isinstance(n, str) and n.strip().lower() in VOCAL_INSTRUMENTS for n in names)


def _inside(song_dir: str, relative: str) -> bool:
    joined = posixpath.normpath(posixpath.join(song_dir, relative))
    return not posixpath.isabs(relative) and (joined + "/").startswith(song_dir.rstrip("/") + "/")


def read_medleydb_song(folder: Folder, song_id: str, split: str) -> Song | None:
    """One song from its metadata; None (logged) when it has no vocal stem."""
    import yaml

    meta_name = f"{song_id}_METADATA.yaml"
    meta_url = folder.url(meta_name)
    try:
        meta = yaml.safe_load(folder.read_text(meta_name))
        stems = meta["stems"]
        stem_dir = meta.get("stem_dir") or f"{song_id}_STEMS"
        entries = [(key, stem["filename"], stem.get("instrument")) for key, stem in stems.items()]
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        return Song(song_id, split, (), (), f"{meta_url}: unreadable MedleyDB metadata ({exc!r})")
    vocals, others, error = [], [], None
    for key, filename, instrument in entries:
        relative = posixpath.join(str(stem_dir), str(filename))
        if not _inside(folder.path, relative):
            error = f"{meta_url}: stems.{key}.filename {relative!r} points outside the song folder"
            break
        if not folder.is_file(relative):
            error = f"{meta_url}: stems.{key}.filename names a missing file {folder.url(relative)}"
            break
        (vocals if is_vocal(instrument) else others).append(Stem(folder.url(relative)))
    if error is None and not vocals:
        log.info("skipping MedleyDB song %s: no vocal stem (instrumental)", song_id)
        return None
    return Song(song_id, split, tuple(vocals), tuple(others), error)


def list_medleydb_songs(corpus: CorpusConfig) -> list[Song]:
    root = Folder.open(corpus.root)
    audio = root.child("Audio") if root.is_dir("Audio") else root
    songs = []
    for song_id in audio.subfolders():
        folder = audio.child(song_id)
        if not folder.is_file(f"{song_id}_METADATA.yaml"):
            log.info("skipping %s: no %s_METADATA.yaml", folder.url(), song_id)
            continue
        split = hash_split(song_id, corpus.valid_fraction, corpus.test_fraction)
        song = read_medleydb_song(folder, song_id, split)
        if song is not None:
            songs.append(song)
    if not songs:
        raise CorpusError(
            f"{corpus.root}: no MedleyDB song with vocals found; expected Audio/<id>/<id>_METADATA.yaml"
        )
    return songs
