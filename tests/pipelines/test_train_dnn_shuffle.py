"""The DNN job's training windows are shuffled across songs (the prepared shards group them by song)."""

from __future__ import annotations

import numpy as np
from conftest import small_config_dict

from karaoke.config import config_from_dict


def test_train_windows_are_shuffled_across_songs_and_none_is_lost(ray_session, synth_root, tmp_path):
    from karaoke.dataset import read_windows
    from pipelines.prepare import prepare_dataset
    from pipelines.train_dnn import shuffled_train_windows

    config = config_from_dict(small_config_dict(str(synth_root), windows={"train_hop": 10}))
    dataset = str(tmp_path / "dataset")
    prepare_dataset(config, dataset)
    stored = read_windows(dataset, "train", ["song_id", "mixture"])
    songs = sorted(set(stored["song_id"]))
    assert len(songs) >= 3  # the 4 training songs of the synthetic corpus, ~74 windows each

    song_of = {window.tobytes(): song for window, song in zip(stored["mixture"], stored["song_id"])}
    rows = list(shuffled_train_windows(dataset, config.train).iter_rows())
    order = [song_of[np.asarray(row["mixture"], dtype=np.float16).tobytes()] for row in rows]

    # The same windows, each once, with their IBMs.
    assert sorted(order) == sorted(stored["song_id"].tolist())
    assert len({np.asarray(row["mixture"], dtype=np.float16).tobytes() for row in rows}) == len(stored["mixture"])
    assert all(np.asarray(row["ibm"]).shape == np.asarray(row["mixture"]).shape for row in rows)
    # In stored order the first 64 windows (four 16-window batches) are one song's; shuffled, every song's.
    assert len(set(stored["song_id"][:64])) == 1
    assert set(order[:64]) == set(songs)
