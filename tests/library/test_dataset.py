"""The dataset layout and plain reader (karaoke.dataset) and the per-song writer (karaoke.preparation), without Ray."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from karaoke.config import config_from_dict
from karaoke.corpora import list_songs
from karaoke.dataset import (
    DatasetError,
    load_manifest,
    read_songs,
    read_windows,
    shard_name,
)
from karaoke.features import song_features, training_rows
from karaoke.preparation import done_songs, prepare_song, write_manifest
from tests.conftest import small_config_dict
from tests.reference import n_frames_for


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, small_config):
    """Every song of the 5-song synthetic corpus prepared without Ray, manifest written."""
    dataset = str(tmp_path_factory.mktemp("dataset") / "ds")
    songs = list_songs(small_config.corpus)
    statuses = [prepare_song(song, small_config, dataset) for song in songs]
    write_manifest(dataset, small_config, statuses)
    return dataset, songs, statuses


def expected_windows(n_samples: int, config) -> int:
    n_frames = n_frames_for(n_samples, config.stft)
    size, hop = config.windows.n_frames, config.windows.train_hop
    return 0 if n_frames < size else (n_frames - size) // hop + 1


def test_row_counts_follow_song_lengths(prepared, small_config):
    dataset, songs, statuses = prepared
    assert all(s["status"] == "ok" for s in statuses)
    for split in ("train", "test"):
        windows = read_windows(dataset, split, columns=["song_id", "start_frame"])
        for song in (s for s in songs if s.split == split):
            n_samples = len(song.load(16000).mixture)
            starts = windows["start_frame"][windows["song_id"] == song.song_id]
            assert len(starts) == expected_windows(n_samples, small_config) > 0
            np.testing.assert_array_equal(starts, np.arange(len(starts)) * small_config.windows.train_hop)


def test_window_values_match_library(prepared, small_config):
    dataset, songs, _ = prepared
    song = next(s for s in songs if s.split == "train")
    features = song_features(song.load(16000, "paper"), small_config)
    rows = training_rows(features, small_config)
    stored = read_windows(dataset, "train")
    mine = stored["song_id"] == song.song_id
    assert stored["mixture"].shape[1:] == (small_config.stft.n_bins, small_config.windows.n_frames)
    for name in ("mixture", "vocals", "accompaniment"):
        assert stored[name].dtype == np.float16
        np.testing.assert_array_equal(stored[name][mine], rows[name].astype(np.float16))
    np.testing.assert_array_equal(stored["ibm"][mine], rows["ibm"].astype(np.uint8))


def test_mask_and_magnitudes_are_consistent(prepared):
    stored = read_windows(prepared[0], "train")
    vocals = stored["vocals"].astype(np.float32)
    accompaniment = stored["accompaniment"].astype(np.float32)
    mixture = stored["mixture"].astype(np.float32)
    ibm = stored["ibm"].astype(bool)
    assert set(np.unique(stored["ibm"])) <= {0, 1}
    assert 0.05 < ibm.mean() < 0.95
    # float16 rounding can only turn a strict inequality into equality, never reverse it.
    assert np.all(vocals[ibm] >= accompaniment[ibm])
    assert np.all(vocals[~ibm] <= accompaniment[~ibm])
    # |v + a| <= |v| + |a| bin by bin (the mixture STFT is the sum of the references' STFTs).
    assert np.all(mixture <= (vocals + accompaniment) * (1 + 2e-3) + 1e-4)
    assert 0.5 < mixture.max() <= 1.0


def test_songs_hold_the_mixed_references(prepared):
    dataset, songs, _ = prepared
    stored = read_songs(dataset, "test")
    wanted = [s for s in songs if s.split == "test"]
    assert [s.song_id for s in stored] == [s.song_id for s in wanted]
    direct = wanted[0].load(16000, "paper")
    for name in ("mixture", "vocals", "accompaniment"):
        np.testing.assert_array_equal(getattr(stored[0], name), getattr(direct, name))
    assert stored[0].sample_rate == 16000 and stored[0].split == "test"
    with pytest.raises(DatasetError, match="valid and test"):
        read_songs(dataset, "train")


def test_manifest_records_counts_and_files(prepared):
    dataset, songs, statuses = prepared
    manifest = load_manifest(dataset)
    assert manifest["failed"] == 0
    assert [s["song_id"] for s in manifest["songs"]] == sorted(s.song_id for s in songs)
    train = manifest["splits"]["train"]
    assert train["songs"] == sum(s.split == "train" for s in songs)
    assert train["windows"] == len(read_windows(dataset, "train", columns=["start_frame"])["start_frame"])
    assert manifest["window_shape"] == [257, 20]
    assert manifest["config"]["stft"] == {"n_fft": 512, "hop_length": 128}


def test_corrupt_song_is_a_failed_status(tmp_path, synth_root, small_config):
    corpus = tmp_path / "corpus"
    shutil.copytree(synth_root, corpus)
    broken = corpus / "train" / "synth_000_0001" / "bass.wav"
    broken.write_bytes(b"RIFF\x00\x00not audio at all")
    config = config_from_dict(small_config_dict(str(corpus)))
    song = next(s for s in list_songs(config.corpus) if s.song_id == "synth_000_0001")
    status = prepare_song(song, config, str(tmp_path / "ds"))
    assert status["status"] == "failed" and str(broken) in status["reason"]
    assert not (tmp_path / "ds").exists()


def test_rerun_state_and_config_guard(prepared, small_config):
    dataset, songs, statuses = prepared
    done = done_songs(dataset, songs, small_config)
    assert {k: v["n_windows"] for k, v in done.items()} == {s["song_id"]: s["n_windows"] for s in statuses}
    other = config_from_dict(small_config_dict(small_config.corpus.root, windows={"train_hop": 30}))
    with pytest.raises(DatasetError, match="other corpus/stft/windows"):
        done_songs(dataset, songs, other)


def test_unfinished_dataset_and_bad_requests(prepared, tmp_path):
    with pytest.raises(DatasetError, match="no manifest.json"):
        read_windows(str(tmp_path), "train")
    with pytest.raises(DatasetError, match="unknown split"):
        read_windows(prepared[0], "training")
    with pytest.raises(DatasetError, match="unknown window column"):
        read_windows(prepared[0], "train", columns=["magnitude"])


@pytest.mark.parametrize(
    "song_id",
    ["Ani_1_01", "The Easton Ellises - Falcon 69", "a/b", "../etc", "", "x" * 300, "é"],
)
def test_shard_names_are_safe_and_unique(song_id):
    name = shard_name(song_id)
    assert name.endswith(".parquet") and "/" not in name and not name.startswith(".")
    assert len(name) < 120
    assert shard_name(song_id + "!") != name


def test_a_damaged_shard_is_named_and_its_song_prepared_again(prepared, small_config, tmp_path, caplog):
    source, songs, statuses = prepared
    dataset = tmp_path / "ds"
    shutil.copytree(source, dataset)
    victim = next(s for s in statuses if s["split"] == "train" and s["n_windows"])
    shard = dataset / victim["files"][-1]
    shard.write_bytes(shard.read_bytes()[:200])  # cut off after the job had finished
    with caplog.at_level("WARNING"):
        done = done_songs(str(dataset), songs, small_config)
    assert victim["song_id"] not in done and len(done) == len(songs) - 1
    assert victim["files"][-1] in caplog.text and "damaged" in caplog.text
    assert not shard.exists()
    # The rerun prepares that song alone again and the dataset reads back whole.
    redone = [prepare_song(s, small_config, str(dataset)) for s in songs if s.song_id not in done]
    write_manifest(str(dataset), small_config, [*done.values(), *redone])
    again = read_windows(str(dataset), "train", columns=["song_id"])
    assert (again["song_id"] == victim["song_id"]).sum() == victim["n_windows"]


def test_remixed_windows_are_stored_with_their_remix_index(tmp_path, small_config):
    """The NMF can leave remixes out (`nmf.train_remixes`) only if each window says what it is."""
    from dataclasses import replace

    from karaoke.preparation import remix_partner_songs

    config = replace(small_config, windows=replace(small_config.windows, remixes=2))
    songs = list_songs(config.corpus)
    train = [s for s in songs if s.split == "train"]
    dataset = str(tmp_path / "ds")
    status = prepare_song(train[0], config, dataset, remix_partner_songs(train[0], train, config))
    write_manifest(dataset, config, [status])
    windows = read_windows(dataset, "train", columns=["start_frame", "remix"])
    counts = np.bincount(windows["remix"])
    assert len(counts) == 3 and (counts == counts[0]).all() and counts[0] > 0
    np.testing.assert_array_equal(windows["start_frame"][windows["remix"] == 0], windows["start_frame"][windows["remix"] == 2])
