"""A batch's files and their track names (karaoke.tracks): one output folder per input."""

from pathlib import Path

import pytest

from karaoke.errors import AudioError
from karaoke.tracks import input_files, track_names


def test_track_names_mirror_the_paths_below_the_common_folder_and_never_collide(tmp_path):
    for name in ("a/song.wav", "b/song.wav", "c/take.wav", "c/take.flac", "c/notes.txt", "c/live/x.mp3"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files = input_files([tmp_path / "a" / "song.wav", tmp_path / "b" / "song.wav", tmp_path / "c", tmp_path / "c" / "take.wav"])
    assert [Path(p).relative_to(tmp_path).as_posix() for p in files] == [
        "a/song.wav", "b/song.wav", "c/live/x.mp3", "c/take.flac", "c/take.wav",  # each once, no .txt
    ]
    assert track_names(files) == ["a/song", "b/song", "c/live/x", "c/take_flac", "c/take_wav"]
    assert track_names([tmp_path / "c" / "take.wav"]) == ["take"]
    assert track_names([Path("c") / "live" / "x.mp3", Path("c") / "take.wav"]) == ["live/x", "take"]


def test_urls_are_named_by_the_same_rule():
    assert track_names(["s3://b/music/x.flac", "s3://b/music/live/y.wav"]) == ["x", "live/y"]
    assert track_names(["s3://b/a/song.wav", "s3://b/a/song.flac", "s3://c/song.wav"]) == ["b/a/song_wav", "b/a/song_flac", "c/song"]


def test_a_missing_path_or_a_folder_without_audio_is_named(tmp_path):
    with pytest.raises(AudioError, match="nothing: no such file or folder"):
        input_files([tmp_path / "nothing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(AudioError, match="empty: folder holds no audio files"):
        input_files([tmp_path / "empty"])
