import numpy as np
import pytest
import yaml

from karaoke.audio import read_audio, write_audio
from karaoke.config import config_from_dict
from karaoke.corpora import list_songs
from karaoke.corpora.medleydb import is_vocal
from karaoke.corpora.synth import synth_song, write_synth_corpus
from karaoke.errors import AudioError, CorpusError

SR = 16000


def corpus(layout, root, **extra):
    return config_from_dict({"corpus": {"layout": layout, "root": str(root), "sample_rate": SR, **extra}}).corpus


def noise(seed, n=SR // 2):
    return (0.3 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def make_medleydb(root, song_id, stems, write=True):
    song = root / "Audio" / song_id
    (song / f"{song_id}_STEMS").mkdir(parents=True)
    meta = {"stem_dir": f"{song_id}_STEMS", "stems": {}}
    for i, (filename, instrument) in enumerate(stems, 1):
        meta["stems"][f"S{i:02d}"] = {"filename": filename, "instrument": instrument}
        if write and "/" not in filename:
            write_audio(song / f"{song_id}_STEMS" / filename, noise(i), SR)
    (song / f"{song_id}_METADATA.yaml").write_text(yaml.safe_dump(meta))


def test_medleydb_instrument_string_or_list(tmp_path, caplog):
    make_medleydb(
        tmp_path,
        "Artist_Song",
        [("S01.wav", "drum set"), ("S02.wav", ["female singer", "violin"]), ("S03.wav", "Male Rapper"), ("S04.wav", ["piano"])],
    )
    make_medleydb(tmp_path, "Band_Instrumental", [("S01.wav", "electric bass"), ("S02.wav", ["piano", "synthesizer"])])
    with caplog.at_level("INFO"):
        songs = list_songs(corpus("medleydb", tmp_path))
    assert [s.song_id for s in songs] == ["Artist_Song"]
    assert "Band_Instrumental: no vocal stem" in caplog.text
    song = songs[0]
    assert [s.path.rsplit("/", 1)[1] for s in song.vocal_stems] == ["S02.wav", "S03.wav"]
    assert [s.path.rsplit("/", 1)[1] for s in song.accompaniment_stems] == ["S01.wav", "S04.wav"]
    mixed = song.load(SR)
    assert np.array_equal(mixed.mixture, mixed.vocals + mixed.accompaniment)
    assert is_vocal("choir") and is_vocal(["beatboxing"]) and not is_vocal(None) and not is_vocal(["tabla"])


def test_medleydb_bad_metadata_fails_that_song_only(tmp_path):
    make_medleydb(tmp_path, "Good_Song", [("S01.wav", "male singer"), ("S02.wav", "bass")])
    make_medleydb(tmp_path, "Missing_Stem", [("S01.wav", "male singer"), ("S02.wav", "bass")], write=False)
    make_medleydb(tmp_path, "Escaping_Song", [("S01.wav", "male singer"), ("../../../etc/passwd", "bass")])
    songs = {s.song_id: s for s in list_songs(corpus("medleydb", tmp_path))}
    assert songs["Good_Song"].load(SR).seconds == 0.5
    with pytest.raises(CorpusError, match=r"Missing_Stem_METADATA.yaml: stems.S01.filename names a missing file"):
        songs["Missing_Stem"].load(SR)
    with pytest.raises(CorpusError, match=r"Escaping_Song_METADATA.yaml: stems.S02.filename .* outside the song folder"):
        songs["Escaping_Song"].load(SR)


def test_mir1k_channels_and_singer_split(mir1k_root):
    songs = list_songs(corpus("mir1k", mir1k_root, mixing="sum"))
    by_split = {split: [s for s in songs if s.split == split] for split in ("train", "valid", "test")}
    assert {s.song_id.split("_")[0] for s in by_split["train"]} == {"abjones", "amy"}
    assert {s.song_id.split("_")[0] for s in by_split["valid"]} == {"Ani", "annar", "ariel", "bobon"}
    assert len(by_split["train"]) == 175 and len(by_split["valid"]) == 170
    song = by_split["valid"][0]
    raw, rate = read_audio(song.vocal_stems[0].path)
    assert rate == 16000 and raw.shape[0] == 2
    mixed = song.load(16000, "sum")
    assert np.array_equal(mixed.vocals, raw[1])  # right channel = voice
    assert np.array_equal(mixed.accompaniment, raw[0])  # left channel = accompaniment
    assert np.array_equal(mixed.mixture, raw[0] + raw[1])


def test_musdb_sample_reads_four_stems(musdb_root):
    songs = list_songs(corpus("musdb", musdb_root, sample_rate=44100))
    assert len(songs) == 1
    song = songs[0]
    names = sorted(s.path.rsplit("/", 1)[1] for s in song.accompaniment_stems)
    assert names == ["bass.flac", "drums.flac", "other.flac"]
    assert song.vocal_stems[0].path.endswith("vocals.flac")
    mixed = song.load(22050)  # resampled from 44.1 kHz
    assert mixed.sample_rate == 22050 and abs(mixed.seconds - 6.1) < 0.1
    assert np.max(np.abs(mixed.vocals)) == pytest.approx(1.0, abs=1e-6)


def test_stems_folder_layout_and_missing_stems(tmp_path):
    for name, stems in {"a": ("vocals", "accompaniment"), "b": ("vocals", "guitar", "mixture"), "c": ("accompaniment",)}.items():
        for i, stem in enumerate(stems):
            write_audio(tmp_path / name / f"{stem}.wav", noise(i), SR)
    songs = {s.song_id: s for s in list_songs(corpus("stems", tmp_path, test_fraction=0.0))}
    assert set(songs) == {"a", "b", "c"} and all(s.split == "train" for s in songs.values())
    assert [p.path.rsplit("/", 1)[1] for p in songs["b"].accompaniment_stems] == ["guitar.wav"]
    with pytest.raises(CorpusError, match="no vocals"):
        songs["c"].load(SR)
    with pytest.raises(CorpusError, match="missing stem"):
        list_songs(corpus("musdb", tmp_path))[0].load(SR)


def test_stems_of_different_rates_are_refused(tmp_path):
    write_audio(tmp_path / "s" / "vocals.wav", noise(1), SR)
    write_audio(tmp_path / "s" / "accompaniment.wav", noise(2), 22050)
    (song,) = list_songs(corpus("stems", tmp_path))
    with pytest.raises(AudioError, match="sample rate 22050 Hz differs"):
        song.load(SR)


@pytest.mark.parametrize("layout", ["stems", "musdb", "medleydb", "mir1k"])
def test_wrong_layout_is_a_clear_error(tmp_path, layout):
    (tmp_path / "random" / "stuff").mkdir(parents=True)
    with pytest.raises(CorpusError, match=str(tmp_path)):
        list_songs(corpus(layout, tmp_path))
    with pytest.raises(CorpusError, match="corpus folder not found"):
        list_songs(corpus(layout, tmp_path / "nope"))


def test_synth_is_deterministic_and_has_vocal_structure(tmp_path):
    a, b = synth_song(3, 7, 4.0, SR), synth_song(3, 7, 4.0, SR)
    assert set(a) == {"vocals", "drums", "bass", "chords"}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["vocals"], synth_song(4, 7, 4.0, SR)["vocals"])
    vocals = synth_song(0, 0, 20.0, SR)["vocals"]
    frame_energy = np.square(vocals[: len(vocals) // 400 * 400].reshape(-1, 400)).mean(axis=1)
    assert (frame_energy < 1e-4 * frame_energy.max()).mean() > 0.1  # pauses between phrases
    assert (frame_energy > 1e-2 * frame_energy.max()).mean() > 0.3  # but mostly singing
    write_synth_corpus(tmp_path, n_songs=5, seed=0, seconds=2.0, sample_rate=SR)
    songs = list_songs(corpus("stems", tmp_path))
    assert [s.split for s in songs] == ["train"] * 4 + ["test"]
    assert len(songs[0].accompaniment_stems) == 3


def test_synth_corpus_of_another_length_is_refused(tmp_path):
    from karaoke.corpora.synth import write_synth_corpus
    from karaoke.errors import CorpusError

    write_synth_corpus(tmp_path, n_songs=1, seconds=1.0, sample_rate=8000)
    write_synth_corpus(tmp_path, n_songs=1, seconds=1.0, sample_rate=8000)  # the same songs: kept
    with pytest.raises(CorpusError, match=r"1 s at 8000 Hz, but 2 s at 8000 Hz were asked for; delete"):
        write_synth_corpus(tmp_path, n_songs=2, seconds=2.0, sample_rate=8000)
