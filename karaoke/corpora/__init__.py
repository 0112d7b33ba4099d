"""Corpus readers: every layout becomes a list of `Song`s (id, split, vocal and accompaniment stems)."""

from __future__ import annotations

from karaoke.config import CorpusConfig
from karaoke.corpora.base import Song, Stem

__all__ = ["Song", "Stem", "list_songs"]


def list_songs(corpus: CorpusConfig, split: str | None = None) -> list[Song]:
    """The songs of a corpus (optionally one split), sorted by id.

    The synthetic layout is generated into `corpus.root` first when it is not there yet.
    """
    from karaoke.corpora.medleydb import list_medleydb_songs
    from karaoke.corpora.mir1k import list_mir1k_songs
    from karaoke.corpora.stems import list_musdb_songs, list_stems_songs
    from karaoke.corpora.synth import ensure_synth_corpus

    readers = {
        "stems": list_stems_songs,
        "musdb": list_musdb_songs,
        "medleydb": list_medleydb_songs,
        "mir1k": list_mir1k_songs,
    }
    if corpus.layout == "synth":
        ensure_synth_corpus(corpus)
        songs = list_stems_songs(corpus)
    else:
        songs = readers[corpus.layout](corpus)
    return sorted((s for s in songs if split is None or s.split == split), key=lambda s: s.song_id)
