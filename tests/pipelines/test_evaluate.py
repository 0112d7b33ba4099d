"""pipelines.evaluate: parallel Ray scoring of separators (IBM, DNN, NMF checkpoints) over the alpha grid, then the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from karaoke.bss_engine import EXPLICIT_ABOVE_DB
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
    """Binary masks at every alpha, soft masks once (the config separates with them), the IBM once."""
    from dataclasses import replace

    from pipelines.evaluate import evaluate

    config = replace(config, evaluation=replace(config.evaluation, mask="soft"))
    scores_path = evaluate(config, tmp_path, [("ibm", None), ("dnn", dnn_checkpoint)])
    rows = read_scores(scores_path)
    songs = list_songs(config.corpus, "train")
    assert len(rows) == len(songs) * (1 + 3 + 1)
    assert {(r["method"], r["mask"], r["song_id"], r["alpha"]) for r in rows} == {
        *(("dnn", "binary", s.song_id, a) for s in songs for a in (0.2, 0.5, 0.8)),
        *(("dnn", "soft", s.song_id, 0.5) for s in songs),
        *(("ibm", "binary", s.song_id, 0.5) for s in songs),
    }

    # The Ray tasks give what the library gives for the same song.
    song = songs[0].load(config.corpus.sample_rate, config.corpus.mixing)
    features = song_features(song, config)
    direct = score_alpha_grid(
        features.mixture_stft,
        features.ibm.astype(np.float32),
        np.stack([song.vocals, song.accompaniment]),
        song.mixture,
        (0.5,),
        config.stft,
        song.sample_rate,
    )
    stored = [r for r in rows if r["method"] == "ibm" and r["song_id"] == song.song_id]
    for got, want in zip(stored, direct, strict=True):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, nan_ok=True)

    summary = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert {(s["method"], s["mask"], s["alpha"]) for s in summary} == {
        *(("dnn", "binary", a) for a in (0.2, 0.5, 0.8)), ("dnn", "soft", 0.5), ("ibm", "binary", 0.5)
    }
    assert all(s["n_songs"] == len(songs) and "vocals_gnsdr" in s for s in summary)
    assert (tmp_path / "scores" / "config.yaml").is_file()

    # Figure 1 shows 1.5 s of the first song separated by the DNN.
    with np.load(tmp_path / "scores" / "excerpt.npz") as excerpt:
        assert str(excerpt["method"]) == "dnn" and str(excerpt["song_id"]) == songs[0].song_id
        assert len(excerpt["mixture"]) == int(1.5 * song.sample_rate)
        start = round(float(excerpt["start_seconds"]) * song.sample_rate)
        np.testing.assert_array_equal(excerpt["vocals"], song.vocals[start : start + len(excerpt["vocals"])])
    report = write_report(tmp_path)
    assert (tmp_path / "report" / "figure1.png").stat().st_size > 0 and "| ibm | binary | 0.50 |" in report.read_text()


def test_evaluate_without_providers_is_a_clear_error(ray_session, config, tmp_path):
    from karaoke.errors import KaraokeError
    from pipelines.evaluate import evaluate

    with pytest.raises(KaraokeError, match="nothing to evaluate"):
        evaluate(config, tmp_path, [])


@pytest.fixture(scope="module")
def nmf_checkpoint(config, tmp_path_factory):
    """Bases learned by 4 KL-NMF iterations on the windows of the first training song."""
    import torch

    from karaoke.features import training_rows
    from karaoke.models.nmf import fit_nmf, save_bases, window_keys

    song = list_songs(config.corpus, "train")[0].load(config.corpus.sample_rate, config.corpus.mixing)
    rows = training_rows(song_features(song, config), config)
    n = len(rows["start_frame"])
    V = torch.stack(
        [torch.from_numpy(rows[s].reshape(n, -1).astype(np.float32)).T for s in ("vocals", "accompaniment")]
    ).contiguous()
    W, _, _ = fit_nmf(V, window_keys([song.song_id] * n, rows["start_frame"]), config.nmf.n_components, 4, seed=0)
    return str(save_bases(tmp_path_factory.mktemp("nmf") / "bases", W, config, iteration=4))


@pytest.mark.slow
def test_evaluate_command_scores_a_trained_nmf_checkpoint(ray_session, config, nmf_checkpoint, tmp_path):
    from karaoke.config import save_config
    from karaoke.models.nmf import load_bases, nmf_vocal_probability
    from karaoke_cli.main import main

    save_config(config, tmp_path / "config.yaml")
    main(["evaluate", "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path), "--nmf", nmf_checkpoint, "--no-ibm"],
         standalone_mode=False)
    rows = read_scores(tmp_path / "scores" / "scores.parquet")
    songs = list_songs(config.corpus, "train")
    assert len(rows) == len(songs) * 3
    assert {(r["method"], r["song_id"], r["alpha"]) for r in rows} == {
        ("nmf", s.song_id, a) for s in songs for a in (0.2, 0.5, 0.8)
    }
    assert all(np.isfinite(r["vocals_sdr"]) and np.isfinite(r["accompaniment_sar"]) for r in rows)

    # The Ray task's scores are those of the library's NMF separation of the same song.
    song = songs[-1].load(config.corpus.sample_rate, config.corpus.mixing)
    features = song_features(song, config)
    W_v, W_nv, _ = load_bases(nmf_checkpoint, config)
    probability = nmf_vocal_probability(
        features.mixture, W_v, W_nv, config.windows.n_frames, config.nmf.test_iterations, config.nmf.seed
    )
    direct = score_alpha_grid(
        features.mixture_stft,
        probability,
        np.stack([song.vocals, song.accompaniment]),
        song.mixture,
        (0.2, 0.5, 0.8),
        config.stft,
        song.sample_rate,
    )
    stored = sorted((r for r in rows if r["song_id"] == song.song_id), key=lambda r: r["alpha"])
    for got, want in zip(stored, direct, strict=True):
        for key, value in want.items():
            if key != "mask" and value > EXPLICIT_ABOVE_DB:
                # An estimate with almost no artefacts (p above a low alpha nearly everywhere): its
                # SAR measures float32 rounding, which the task's blockwise overlap-add and the
                # whole-song inverse STFT do differently.
                assert got[key] > EXPLICIT_ABOVE_DB, key
                continue
            # float32 NMF updates on another thread count: last-digit differences, far below 0.01 dB
            assert got[key] == (value if key == "mask" else pytest.approx(value, rel=1e-4, abs=1e-3, nan_ok=True))
    summary = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert {(s["method"], s["mask"], s["alpha"]) for s in summary} == {("nmf", "binary", a) for a in (0.2, 0.5, 0.8)}


@pytest.mark.slow
def test_a_truncated_stem_in_the_corpus_is_one_line_naming_it(ray_session, tmp_path, capsys):
    """Fault: a stem of a corpus song cut to half its bytes; the scoring task reads it. Expected: the
    command exits 2 with one line naming the file (the task's error without Ray's traceback), and no
    scores are written."""
    import soundfile as sf

    from karaoke.config import save_config
    from karaoke_cli.main import main

    song = tmp_path / "corpus" / "test" / "song"
    song.mkdir(parents=True)
    t = np.arange(32000) / 16000
    sf.write(song / "vocals.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 16000, subtype="PCM_16")
    sf.write(song / "accompaniment.wav", 0.3 * np.sin(2 * np.pi * 110 * t), 16000, subtype="PCM_16")
    cut = song / "accompaniment.wav"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    config = config_from_dict(small_config_dict(str(tmp_path / "corpus"), corpus={"layout": "stems"}))
    save_config(config, tmp_path / "config.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run")], standalone_mode=False)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {cut}: truncated audio") and "Traceback" not in error
    assert not (tmp_path / "run" / "scores" / "scores.parquet").exists()
