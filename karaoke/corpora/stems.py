"""Stems folders: `[split/]<song>/` holding `vocals*.<ext>` (vocal stems) and any other audio files
(accompaniment stems, e.g. `accompaniment.wav`, or `drums.wav`, `bass.wav`...). A `mixture.*` file is
ignored: the mixture is always rebuilt from the stems. This is also the MUSDB18(-HQ) layout:
`{train,test}/<song>/{mixture,drums,bass,other,vocals}.{wav,flac}`.

With `train/`, `valid/` or `test/` folders at the top, those are the splits; otherwise every
subfolder is a song and splits are drawn from a hash of its name.
"""

from __future__ import annotations

from karaoke.audio import is_audio_file
from karaoke.config import CorpusConfig
from karaoke.corpora.base import Song, Stem, hash_split, with_valid
from karaoke.corpora.fs import Folder
from karaoke.errors import CorpusError

SPLIT_FOLDERS = ("train", "valid", "test")
MUSDB_STEMS = ("vocals", "drums", "bass", "other")


def _song(folder: Folder, song_id: str, split: str, required: tuple[str, ...]) -> Song:
    audio = [name for name in folder.files() if is_audio_file(name)]
    stem_of = {name.rsplit(".", 1)[0].lower(): name for name in audio}
    vocals = tuple(Stem(folder.url(n)) for n in audio if n.lower().startswith("vocal"))
    others = tuple(
        Stem(folder.url(n)) for n in audio if not n.lower().startswith(("vocal", "mixture"))
    )
    missing = [stem for stem in required if stem not in stem_of]
    error = None
    if missing:
        error = f"{folder.url()}: missing stem(s) {', '.join(missing)} (expected {', '.join(required)})"
    elif not vocals:
        error = f"{folder.url()}: no vocals.* stem in the song folder"
    elif not others:
        error = f"{folder.url()}: no accompaniment stem (any audio file other than vocals.*/mixture.*)"
    return Song(song_id, split, vocals, others, error)


def list_stems_songs(corpus: CorpusConfig, required: tuple[str, ...] = ()) -> list[Song]:
    root = Folder.open(corpus.root)
    top = root.subfolders()
    if any(name in SPLIT_FOLDERS for name in top):
        groups = [(split, root.child(split)) for split in SPLIT_FOLDERS if split in top]
    else:
        groups = [(None, root)]
    songs = []
    for split, group in groups:
        for name in group.subfolders():
            folder = group.child(name)
            if not any(is_audio_file(f) for f in folder.files()):
                continue
            if split is None:
                song_split = hash_split(name, corpus.valid_fraction, corpus.test_fraction)
            else:
                song_split = with_valid(split, name, corpus.valid_fraction)
            songs.append(_song(folder, name, song_split, required))
    if not songs:
        expected = "{train,test}/<song>/{vocals,drums,bass,other}.wav" if required else "<song>/{vocals,accompaniment}.wav"
        raise CorpusError(f"{corpus.root}: no song folders found; the {corpus.layout} layout expects {expected}")
    return songs


def list_musdb_songs(corpus: CorpusConfig) -> list[Song]:
    return list_stems_songs(corpus, required=MUSDB_STEMS)
