"""The Ray Data preparation job (pipelines/prepare.py) on local Ray: synthetic corpus, MIR-1K clips,
s3:// through a real moto server, a corrupt file, and a killed run followed by a rerun."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from karaoke.config import config_from_dict, save_config
from karaoke.dataset import load_manifest, read_songs, read_windows
from karaoke.features import song_features, training_rows
from tests.conftest import REPO, small_config_dict
from tests.reference import n_frames_for

pytestmark = pytest.mark.usefixtures("ray_session")


def windows_by_key(dataset: str, split: str) -> dict[str, np.ndarray]:
    """A split's windows sorted by (song_id, start_frame), so that two datasets compare row by row."""
    rows = read_windows(dataset, split)
    order = np.lexsort((rows["start_frame"], rows["song_id"]))
    return {name: values[order] for name, values in rows.items()}


def assert_same_rows(a: str, b: str) -> None:
    for split in ("train", "test"):
        left, right = windows_by_key(a, split), windows_by_key(b, split)
        assert len(left["song_id"]) > 0
        for name in left:
            np.testing.assert_array_equal(left[name], right[name], err_msg=f"{split}/{name}")


@pytest.fixture(scope="module")
def prepared_synth(tmp_path_factory, small_config):
    from pipelines.prepare import prepare_dataset

    dataset = str(tmp_path_factory.mktemp("prepared") / "synth")
    return dataset, prepare_dataset(small_config, dataset)


def test_synth_rows_match_song_lengths_and_library(prepared_synth, small_config):
    from karaoke.corpora import list_songs

    dataset, manifest = prepared_synth
    assert manifest == load_manifest(dataset)
    assert manifest["failed"] == 0 and len(manifest["songs"]) == 5
    windows = read_windows(dataset, "train")
    size, hop = small_config.windows.n_frames, small_config.windows.train_hop
    for song in list_songs(small_config.corpus, split="train"):
        mixed = song.load(16000, "paper")
        n_frames = n_frames_for(len(mixed.mixture), small_config.stft)
        mine = windows["song_id"] == song.song_id
        assert mine.sum() == (n_frames - size) // hop + 1
        rows = training_rows(song_features(mixed, small_config), small_config)
        np.testing.assert_array_equal(windows["mixture"][mine], rows["mixture"].astype(np.float16))
        np.testing.assert_array_equal(windows["ibm"][mine], rows["ibm"].astype(np.uint8))
    assert manifest["splits"]["train"]["windows"] == len(windows["song_id"])
    assert [s.song_id for s in read_songs(dataset, "test")] == ["synth_000_0004"]


def test_ray_reader_gives_tensors_of_window_shape(prepared_synth):
    from pipelines.ray_runtime import read_windows_dataset

    dataset, manifest = prepared_synth
    ds = read_windows_dataset(dataset, "train")
    batch = ds.take_batch(batch_size=1000, batch_format="numpy")
    order = np.lexsort((batch["start_frame"], batch["song_id"]))
    expected = windows_by_key(dataset, "train")
    assert batch["mixture"].shape == (manifest["splits"]["train"]["windows"], 257, 20)
    for name in ("mixture", "ibm", "vocals", "accompaniment", "start_frame"):
        np.testing.assert_array_equal(batch[name][order], expected[name])


def test_rerun_skips_done_songs(prepared_synth, small_config):
    from pipelines.prepare import prepare_dataset

    dataset, manifest = prepared_synth
    shards = sorted(Path(dataset, "windows").rglob("*.parquet"))
    before = {p: p.stat().st_mtime_ns for p in shards}
    again = prepare_dataset(small_config, dataset)
    assert {p: p.stat().st_mtime_ns for p in shards} == before
    assert again["songs"] == manifest["songs"] and again["splits"] == manifest["splits"]


def test_corrupt_file_is_reported_and_strict_stops(tmp_path, synth_root, small_config):
    from karaoke.config import load_config
    from karaoke.dataset import DatasetError
    from pipelines.prepare import prepare_dataset, prepare_job

    corpus = tmp_path / "corpus"
    shutil.copytree(synth_root, corpus)
    broken = corpus / "train" / "synth_000_0002" / "vocals.wav"
    broken.write_bytes(broken.read_bytes()[:100])
    config_path = tmp_path / "config.yaml"
    save_config(config_from_dict(small_config_dict(str(corpus))), config_path)
    dataset = str(tmp_path / "ds")
    assert prepare_job(load_config(config_path), dataset) == 1
    manifest = load_manifest(dataset)
    failed = [s for s in manifest["songs"] if s["status"] != "ok"]
    assert [s["song_id"] for s in failed] == ["synth_000_0002"] and str(broken) in failed[0]["reason"]
    assert manifest["failed"] == 1 and manifest["splits"]["train"]["songs"] == 3
    with pytest.raises(DatasetError, match="synth_000_0002"):
        prepare_dataset(config_from_dict(small_config_dict(str(corpus))), str(tmp_path / "strict"), strict=True)
    assert not (tmp_path / "strict" / "manifest.json").exists()


KILLED_RUN = """
import sys, ray
ray.init(address="local", num_cpus=1, include_dashboard=False)
from karaoke_cli.main import main
main(["prepare", "--config", sys.argv[1], "--out", sys.argv[2]])
"""


@pytest.mark.slow
def test_killed_run_then_rerun_gives_the_rows_of_an_uninterrupted_run(tmp_path, small_config, prepared_synth):
    from pipelines.prepare import prepare_dataset

    config_path = tmp_path / "config.yaml"
    save_config(small_config, config_path)
    dataset = tmp_path / "ds"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(config_path), str(dataset)],
        cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # Kill the job (its Ray cluster included) as soon as its first song is complete.
    deadline = time.monotonic() + 300
    while not list(dataset.glob("windows/*/*.parquet")):
        assert proc.poll() is None, "the job ended before it could be killed"
        assert time.monotonic() < deadline, "the job wrote nothing in 300 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (dataset / "manifest.json").exists()
    survivors = {p: p.stat().st_mtime_ns for p in dataset.glob("windows/*/*.parquet")}
    assert 1 <= len(survivors) < 5

    manifest = prepare_dataset(small_config, str(dataset))
    assert manifest["failed"] == 0 and len(manifest["songs"]) == 5
    assert {p: p.stat().st_mtime_ns for p in survivors} == survivors
    assert not list(dataset.rglob(".*.partial"))
    assert_same_rows(str(dataset), prepared_synth[0])


def test_s3_corpus_to_s3_dataset_matches_local(s3_endpoint, synth_root, small_config, prepared_synth):
    import s3fs

    from pipelines.prepare import prepare_dataset
    from pipelines.ray_runtime import read_windows_dataset

    fs = s3fs.S3FileSystem()
    fs.put(str(synth_root), "test-bucket/corpus/synth", recursive=True)
    config = config_from_dict(
        small_config_dict("s3://test-bucket/corpus/synth", corpus={"layout": "stems"})
    )
    dataset = "s3://test-bucket/prepared/synth"
    manifest = prepare_dataset(config, dataset)
    local = load_manifest(prepared_synth[0])
    assert manifest["songs"] == local["songs"] and manifest["splits"] == local["splits"]
    assert_same_rows(dataset, prepared_synth[0])
    for remote_song, local_song in zip(read_songs(dataset, "test"), read_songs(prepared_synth[0], "test")):
        np.testing.assert_array_equal(remote_song.vocals, local_song.vocals)
    assert fs.exists("test-bucket/prepared/synth/config.yaml")
    assert read_windows_dataset(dataset, "train").count() == local["splits"]["train"]["windows"]


def test_mir1k_clips(tmp_path, mir1k_root):
    import soundfile as sf

    from pipelines.prepare import prepare_dataset

    clips = ["abjones_1_01", "amy_1_01", "Ani_1_01", "annar_1_01"]
    (tmp_path / "mir1k" / "Wavfile").mkdir(parents=True)
    for clip in clips:
        os.symlink(mir1k_root / "Wavfile" / f"{clip}.flac", tmp_path / "mir1k" / "Wavfile" / f"{clip}.flac")
    config = config_from_dict(
        small_config_dict(str(tmp_path / "mir1k"), corpus={"layout": "mir1k", "mixing": "sum"},
                          stft={"n_fft": 1024, "hop_length": 256})
    )
    dataset = str(tmp_path / "ds")
    manifest = prepare_dataset(config, dataset)
    assert manifest["failed"] == 0
    assert manifest["splits"]["train"]["songs"] == 2 and manifest["splits"]["valid"]["songs"] == 2
    windows = read_windows(dataset, "valid")
    assert windows["mixture"].shape[1:] == (513, 20)
    for clip in clips[2:]:
        n_samples = sf.info(str(mir1k_root / "Wavfile" / f"{clip}.flac")).frames
        n_frames = n_frames_for(n_samples, config.stft)
        assert (windows["song_id"] == clip).sum() == (n_frames - 20) // 60 + 1
    song = read_songs(dataset, "valid")[0]
    stereo, _ = sf.read(str(mir1k_root / "Wavfile" / f"{song.song_id}.flac"), dtype="float32")
    np.testing.assert_allclose(song.vocals, stereo[:, 1], atol=1e-7)
    np.testing.assert_allclose(song.mixture, stereo[:, 0] + stereo[:, 1], atol=1e-6)
