"""Shared fixtures: the real audio in ../shared/data, a small synthetic corpus, small configs, and
one local Ray cluster for the whole session (started only by tests that ask for it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KARAOKE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real audio not found at {path} (the ../shared/data folder beside the checkout)")
    return path


@pytest.fixture(scope="session")
def mir1k_root() -> Path:
    """The MIR-1K subset (folder holding Wavfile/)."""
    return _need(SHARED_DATA / "mir1k")


@pytest.fixture(scope="session")
def musdb_root() -> Path:
    """One MUSDB18 excerpt: musdb-sample/<song>/{mixture,drums,bass,other,vocals}.flac."""
    return _need(SHARED_DATA / "musdb-sample")


def small_config_dict(corpus_root: str, **sections) -> dict:
    """A tiny but complete experiment config: 16 kHz, 512-point STFT (257 bins), narrow DNN."""
    config = {
        "name": "test",
        "corpus": {"layout": "synth", "root": corpus_root, "sample_rate": 16000, "synth_songs": 5, "synth_seconds": 6},
        "stft": {"n_fft": 512, "hop_length": 128},
        "windows": {"n_frames": 20, "train_hop": 60},
        "dnn": {"hidden_sizes": [64]},
        "train": {"epochs": 2, "batch_size": 16},
        "nmf": {"n_components": 8, "train_iterations": 10, "test_iterations": 10},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A 5-song synthetic corpus (4 train, 1 test), 6 s each at 16 kHz, written once per session."""
    from karaoke.corpora.synth import write_synth_corpus

    return write_synth_corpus(tmp_path_factory.mktemp("synth"), n_songs=5, seed=0, seconds=6.0, sample_rate=16000)


@pytest.fixture(scope="session")
def small_config(synth_root):
    from karaoke.config import config_from_dict

    return config_from_dict(small_config_dict(str(synth_root)))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the session. Never `ray stop --force`: it kills every Ray on the machine."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # The dashboard serves the state API, through which Ray Train frees the workers of a Tune trial
    # that ASHA stopped (see pipelines/tune.py).
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    yield ray
    ray.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The local S3 endpoint's settings are in the environment from the start, before any Ray cluster of
# the session: Ray's processes read credentials from their own environment (nothing forwards them),
# as the local cluster of a real run inherits the driver's. The port is chosen once per process:
# this module is imported twice, by pytest and as `tests.conftest`.
S3_PORT = int(os.environ.setdefault("KARAOKE_TEST_S3_PORT", str(_free_port())))
S3_ENV = {
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
os.environ.update(S3_ENV)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real moto S3 server process on 127.0.0.1 with an empty `test-bucket`; yields its URL, which
    every client (boto3, s3fs, pyarrow, Ray's processes) finds in the AWS_* environment."""
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("moto.server")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(S3_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = S3_ENV["AWS_ENDPOINT_URL"]
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start on {url}")
            time.sleep(0.1)
    import boto3

    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="test-bucket")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread: on a shared 2-core machine, spinning thread pools slow tiny models down."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory, small_config):
    """A tiny model as `karaoke export` writes it (soft masks, 16 kHz, 257 x 20 -> 64 -> 257 x 20),
    untrained but with spread-out output biases so that its masks are neither all 0 nor all 1."""
    import dataclasses

    import torch

    from karaoke.model_store import export_model
    from karaoke.models.dnn import build_model, save_dnn

    config = dataclasses.replace(small_config, evaluation=dataclasses.replace(small_config.evaluation, mask="soft"))
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        model.net[2].bias.normal_(0.0, 3.0)
    root = tmp_path_factory.mktemp("models")
    checkpoint = save_dnn(root / "run" / "epoch_0001", model, config, 1, {"train_loss": 0.5})
    return export_model(checkpoint.parent, "tiny", root / "exported", description="a tiny test model")
