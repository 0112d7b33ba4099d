"""pipelines.evaluate: parallel Ray scoring of soft-mask providers over the alpha grid, then the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from karaoke.config import config_from_dict
from karaoke.corpora import list_songs
from karaoke.features import song_features
from karaoke.metrics import score_alpha_grid
from karaoke.report import read_scores, write_report
from tests.conftest import small_config_dict


@pytest.fixture(scope="module")
def config(synth_root):
    return config_from_dict(
        small_config_dict(str(synth_root), evaluation={"alphas": [0.2, 0.5, 0.8], "split": "train"})
    )


@pytest.fixture(scope="module")
def dnn_checkpoint(config, tmp_path_factory):
    import torch

    from karaoke.models.dnn import build_model, save_dnn

    torch.manual_seed(0)
    return str(
        save_dnn(tmp_path_factory.mktemp("dnn") / "ckpt", build_model(config), config, epoch=0, metrics={"loss": 1.0})
    )


@pytest.mark.slow
def test_evaluate_scores_every_song_provider_and_alpha(ray_session, config, dnn_checkpoint, tmp_path):
    from pipelines.evaluate import evaluate

    scores_path = evaluate(config, tmp_path, [("ibm", None), ("dnn", dnn_checkpoint)])
    rows = read_scores(scores_path)
    songs = list_songs(config.corpus, "train")
    assert len(rows) == len(songs) * 2 * 3
    assert {(r["method"], r["song_id"], r["alpha"]) for r in rows} == {
        (m, s.song_id, a) for m in ("ibm", "dnn") for s in songs for a in (0.2, 0.5, 0.8)
    }

    # The Ray tasks give what the library gives for the same song.
    song = songs[0].load(config.corpus.sample_rate, config.corpus.mixing)
    features = song_features(song, config)
    direct = score_alpha_grid(
        features.mixture_stft,
        features.ibm.astype(np.float32),
        np.stack([song.vocals, song.accompaniment]),
        song.mixture,
        (0.2, 0.5, 0.8),
        config.stft,
        song.sample_rate,
    )
    stored = sorted(
        (r for r in rows if r["method"] == "ibm" and r["song_id"] == song.song_id), key=lambda r: r["alpha"]
    )
    for got, want in zip(stored, direct):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, nan_ok=True)

    summary = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert {(s["method"], s["alpha"]) for s in summary} == {(m, a) for m in ("dnn", "ibm") for a in (0.2, 0.5, 0.8)}
    assert all(s["n_songs"] == len(songs) and "vocals_gnsdr" in s for s in summary)
    assert (tmp_path / "scores" / "config.yaml").is_file()

    report = write_report(tmp_path)
    assert (tmp_path / "report" / "figure1.png").stat().st_size > 0 and "| ibm | 0.50 |" in report.read_text()


def test_evaluate_without_providers_is_a_clear_error(ray_session, config, tmp_path):
    from karaoke.errors import KaraokeError
    from pipelines.evaluate import evaluate

    with pytest.raises(KaraokeError, match="nothing to evaluate"):
        evaluate(config, tmp_path, [])
