"""Models by name, folder or URL (karaoke.model_store): export, digests, the download cache."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading

import numpy as np
import pytest
import torch

from karaoke import model_store
from karaoke.errors import CheckpointError
from karaoke.inference import soft_mask
from karaoke.models.dnn import load_dnn


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty download cache and no shipped models."""
    monkeypatch.setenv("KARAOKE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(model_store, "shipped_folder", lambda: tmp_path / "shipped")
    return tmp_path / "cache"


@pytest.fixture
def server(exported_model, tmp_path):
    """A local HTTP server on 127.0.0.1 serving a folder holding `tiny/`; yields (base URL, the
    served folder, the list of paths requested)."""
    served = tmp_path / "served"
    shutil.copytree(exported_model, served / "tiny")
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served, requested
    httpd.shutdown()
    thread.join()


def test_export_writes_float16_weights_a_card_and_a_verified_digest(exported_model, small_config):
    from safetensors.torch import load_file

    card = json.loads((exported_model / "checkpoint.json").read_text())
    assert card["name"] == "tiny" and card["description"] == "a tiny test model" and card["kind"] == "dnn"
    assert card["training_data"] == "synth corpus at 16000 Hz"
    assert card["config"]["evaluation"]["mask"] == "soft" and card["config"]["corpus"]["sample_rate"] == 16000
    assert len(card["sha256"]) == 64
    weights = load_file(str(exported_model / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float16} and not any(k.startswith("optimizer.") for k in weights)
    # the float16 network gives the float32 one's mask to float16 precision
    full, _, _ = load_dnn(exported_model.parent.parent / "run" / "epoch_0001")
    half, config, _ = load_dnn(exported_model)
    magnitude = np.random.default_rng(0).random((config.stft.n_bins, 40)).astype(np.float32)
    np.testing.assert_allclose(soft_mask(half, magnitude, 20), soft_mask(full, magnitude, 20), atol=5e-3)
    with pytest.raises(CheckpointError, match="already exists; remove it or choose another --name or --out"):
        model_store.export_model(exported_model.parent.parent / "run", "tiny", exported_model.parent)


def test_an_exported_model_is_as_readable_as_the_umask_allows(exported_model, tmp_path):
    """The weights get a new file's mode under the umask, as the card does (safetensors alone writes 0600)."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        target = model_store.export_model(exported_model, "shared", tmp_path)
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in target.iterdir()}
    assert modes == {"model.safetensors": 0o644, "checkpoint.json": 0o644}


def test_a_model_whose_weights_do_not_match_their_digest_is_refused(exported_model, tmp_path):
    copy = shutil.copytree(exported_model, tmp_path / "copy")
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match="do not match the digest in checkpoint.json"):
        load_dnn(model_store.locate_model(copy))


def test_names_find_shipped_and_cached_models_and_a_missing_default_names_the_fix(exported_model, cache, tmp_path):
    with pytest.raises(CheckpointError, match=r"the default model 'mir1k' is not installed .*pass --model RUN/dnn"):
        model_store.locate_model(None)
    with pytest.raises(CheckpointError, match=r"nosuch: no such model name, folder or URL \(models: none installed"):
        model_store.locate_model("nosuch")
    shutil.copytree(exported_model, tmp_path / "shipped" / "mir1k")
    assert model_store.locate_model(None) == tmp_path / "shipped" / "mir1k"
    listed = model_store.available_models()
    assert [(m.name, m.origin, m.description) for m in listed] == [("tiny", "shipped", "a tiny test model")]
    assert model_store.locate_model("tiny") == tmp_path / "shipped" / "mir1k"  # by its card's name too


def test_a_url_is_downloaded_once_verified_and_then_found_by_name(server, cache):
    base, _, requested = server
    folder = model_store.locate_model(f"{base}/tiny")
    assert folder.parent == cache / "models" and model_store.checkpoint_problem(folder) is None
    assert sorted(requested) == ["/tiny/checkpoint.json", "/tiny/model.safetensors"]
    assert model_store.locate_model(f"{base}/tiny/") == folder  # cached: the server is not asked again
    assert len(requested) == 2
    assert [(m.name, m.origin) for m in model_store.available_models()] == [("tiny", "cached")]
    assert model_store.locate_model("tiny") == folder
    assert model_store.model_name(folder) == "tiny"


def test_a_corrupt_or_missing_download_is_refused_and_nothing_looks_cached(server, cache):
    base, served, _ = server
    (served / "tiny" / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="the downloaded model does not verify .*nothing was cached"):
        model_store.locate_model(f"{base}/tiny")
    with pytest.raises(CheckpointError, match=r"missing/checkpoint.json: cannot download the model .*check the URL"):
        model_store.locate_model(f"{base}/missing")
    assert list((cache / "models").iterdir()) == []  # no partial folder left behind


def test_an_s3_url_is_downloaded_into_the_cache(exported_model, s3_endpoint, cache):
    import fsspec

    fs = fsspec.filesystem("s3")
    for name in ("checkpoint.json", "model.safetensors"):
        fs.put(str(exported_model / name), f"test-bucket/models/tiny/{name}")
    folder = model_store.locate_model("s3://test-bucket/models/tiny")
    _, config, card = load_dnn(folder)
    assert card["name"] == "tiny" and config.evaluation.mask == "soft"
