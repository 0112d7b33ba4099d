"""MIR-1K: `Wavfile/<singer>_<song>_<clip>.{wav,flac}`, stereo with the accompaniment on the left
channel and the singing voice on the right. Splits go by singer (`corpus.train_singers`,
`corpus.valid_singers`, every other singer is test)."""

from __future__ import annotations

from karaoke.audio import is_audio_file
from karaoke.config import CorpusConfig
from karaoke.corpora.base import Song, Stem
from karaoke.corpora.fs import Folder
from karaoke.errors import CorpusError

ACCOMPANIMENT_CHANNEL = 0
VOICE_CHANNEL = 1


def singer_of(song_id: str) -> str:
    return song_id.split("_", 1)[0]


def list_mir1k_songs(corpus: CorpusConfig) -> list[Song]:
    root = Folder.open(corpus.root)
    wavs = root.child("Wavfile") if root.is_dir("Wavfile") else root
    songs = []
    for name in wavs.files():
        if not is_audio_file(name):
            continue
        song_id = name.rsplit(".", 1)[0]
        singer = singer_of(song_id)
        split = (
            "train"
            if singer in corpus.train_singers
            else "valid" if singer in corpus.valid_singers else "test"
        )
        url = wavs.url(name)
        songs.append(Song(song_id, split, (Stem(url, VOICE_CHANNEL),), (Stem(url, ACCOMPANIMENT_CHANNEL),)))
    if not songs:
        raise CorpusError(f"{corpus.root}: no MIR-1K clips found; expected Wavfile/<singer>_<song>_<clip>.wav")
    return songs
