"""Fault injection into storage and inputs (an S3 endpoint killed mid-write, missing shards, tampered
checkpoints, silence): each test names the fault, injects it into real components (local Ray, a moto S3
server, real files) and checks the promised outcome. The table of faults is docs/faults.md.

Bad-input and numerics cases already covered elsewhere (test_audio_mixing, test_corpora, test_config,
test_dnn, test_bss_engine, test_inference, test_spectral_masks, test_prepare) are not repeated here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from karaoke.config import config_from_dict
from tests.conftest import REPO, small_config_dict

# --- storage faults -----------------------------------------------------------------------------

PREPARE = """
import sys, ray
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
from karaoke_cli.main import main
main(["prepare", "--config", sys.argv[1], "--out", sys.argv[2]])
"""


def _start_moto(port: int) -> subprocess.Popen:
    """A moto S3 server of our own on 127.0.0.1:`port` (this test kills it: not the shared fixture)."""
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start on port {port}")
            time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def own_s3(monkeypatch):
    """(port, start function, servers) of a moto endpoint this test may kill and restart; AWS_* point at it."""
    pytest.importorskip("moto.server")
    import s3fs

    port = _free_port()
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    servers: list[subprocess.Popen] = []

    def start() -> None:
        servers.append(_start_moto(port))

    # s3fs caches filesystems by arguments, not by environment: drop ours before and after
    s3fs.S3FileSystem.clear_instance_cache()
    yield port, start, servers
    s3fs.S3FileSystem.clear_instance_cache()
    for server in servers:
        server.kill()
        server.wait()


@pytest.mark.slow
def test_s3_endpoint_killed_mid_write_fails_clearly_then_rerun_is_complete(own_s3, tmp_path):
    """Fault: the S3 endpoint dies while `prepare` writes shards (after the first song), then comes
    back empty. Expected: the job exits non-zero with one line naming the dataset, the shard and the
    endpoint, and writes no manifest; the rerun redoes every song, and its manifest lists exactly the
    shards in the bucket, all of which read back."""
    import boto3

    from karaoke.config import save_config
    from karaoke.corpora.synth import write_synth_corpus
    from karaoke.dataset import load_manifest, read_songs, read_windows

    port, start_s3, servers = own_s3
    n_songs = 10
    corpus = write_synth_corpus(tmp_path / "corpus", n_songs=n_songs, seed=0, seconds=6.0, sample_rate=16000)
    config = config_from_dict(small_config_dict(str(corpus), corpus={"synth_songs": n_songs}))
    save_config(config, tmp_path / "config.yaml")
    dataset = "s3://faults/ds"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}

    def prepare() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", PREPARE, str(tmp_path / "config.yaml"), dataset], cwd=REPO, env=env,
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def shards() -> list[str]:
        listing = s3.list_objects_v2(Bucket="faults", Prefix="ds/windows/")
        return [item["Key"] for item in listing.get("Contents", [])]

    start_s3()
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="faults")
    job = prepare()
    try:
        deadline = time.monotonic() + 300
        while not (seen := shards()):
            assert job.poll() is None, "prepare ended before its first shard"
            assert time.monotonic() < deadline, "no shard within 300 s"
            time.sleep(0.05)
        servers[-1].kill()
        servers[-1].wait()
        assert len(seen) < n_songs, "every song was written before the endpoint went down"
        output, _ = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert job.returncode != 0 and errors, output[-2000:]
    assert f"{dataset}: cannot write windows/" in errors[-1] and f"127.0.0.1:{port}" in errors[-1]

    # The endpoint comes back empty: the bucket must be made again and every song redone.
    start_s3()
    assert s3.list_buckets()["Buckets"] == []
    s3.create_bucket(Bucket="faults")
    rerun = prepare()
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output[-2000:]
    manifest = load_manifest(dataset)
    assert manifest["failed"] == 0 and len(manifest["songs"]) == n_songs
    listed = {f"ds/{file}" for song in manifest["songs"] for file in song["files"]}
    stored = {item["Key"] for item in s3.list_objects_v2(Bucket="faults", Prefix="ds/")["Contents"]}
    assert listed == {key for key in stored if key.endswith(".parquet")}
    for split, counts in manifest["splits"].items():
        if counts["windows"]:
            assert len(read_windows(dataset, split, ["song_id"])["song_id"]) == counts["windows"]
    assert len(read_songs(dataset, "test")) == manifest["splits"]["test"]["songs"] > 0


# A TCP relay: the endpoint address clients use, in front of a moto server that keeps its data.
RELAY = """
import asyncio, sys

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()

async def serve(reader, writer):
    try:
        upstream = await asyncio.open_connection("127.0.0.1", int(sys.argv[2]))
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, upstream[1]), pipe(upstream[0], writer), return_exceptions=True)

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def _start_relay(port: int, target: int) -> subprocess.Popen:
    """A relay on 127.0.0.1:`port` to `target`, answering once it accepts connections."""
    proc = subprocess.Popen([sys.executable, "-c", RELAY, str(port), str(target)])
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"relay did not start on port {port}")
            time.sleep(0.05)


RUN_STAGES = ("prepare", "dnn", "nmf", "alpha", "evaluate", "report")


@pytest.mark.slow
def test_s3_endpoint_down_during_training_then_back_with_its_data_the_rerun_completes(monkeypatch, tmp_path):
    """Fault: the S3 endpoint of `karaoke run --out s3://...` goes down once the first DNN checkpoint
    is in the bucket (the endpoint's process is killed: every connection drops, new ones are
    refused), then comes back with its data, as an S3 outage ends. The endpoint is a relay in front
    of a moto server that keeps its objects: moto's own persistence (its request recorder, replayed
    on restart) loses concurrent multipart uploads, whose replayed upload ids differ from the
    recorded ones, and a store that comes back empty is the prepare test's case. Expected: the run
    exits non-zero within a bounded time with one line naming the endpoint and no traceback; the
    same command again resumes training from its checkpoint and completes, and the run holds each
    stage's record once, made with the config used, a DNN history of every epoch once, and one
    score row per song, method, mask and alpha."""
    pytest.importorskip("moto.server")
    import boto3
    import s3fs
    import yaml

    from karaoke.config import save_config
    from karaoke.corpora.synth import write_synth_corpus
    from karaoke.report import read_scores
    from karaoke.storage import local_copy, read_json
    from pipelines.evaluate import scored_grid
    from pipelines.run import scored_evaluation
    from pipelines.run_stages import digest

    moto_port, endpoint_port = _free_port(), _free_port()
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{endpoint_port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    corpus = write_synth_corpus(tmp_path / "corpus", n_songs=5, seed=0, seconds=6.0, sample_rate=16000)
    epochs = 6
    config = config_from_dict(small_config_dict(
        str(corpus), corpus={"valid_fraction": 0.25}, train={"epochs": epochs},
        evaluation={"alphas": [0.3, 0.7], "split": "test"},
    ))
    save_config(config, tmp_path / "config.yaml")
    run = "s3://faults/run"
    command = [sys.executable, "-m", "karaoke_cli", "run", "--config", str(tmp_path / "config.yaml"), "--out", run]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    processes = [_start_moto(moto_port), _start_relay(endpoint_port, moto_port)]
    try:
        # The test itself talks to moto directly: it sees the bucket while the endpoint is down.
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}")
        s3.create_bucket(Bucket="faults")

        def keys(prefix: str = "run/") -> list[str]:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket="faults", Prefix=prefix)
            return [item["Key"] for page in pages for item in page.get("Contents", [])]

        job = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 600
            # The first epoch complete: its card and its weights (an S3 object is listed once whole).
            while not {"run/dnn/epoch_0001/checkpoint.json", "run/dnn/epoch_0001/model.safetensors"} <= set(keys("run/dnn/")):
                assert job.poll() is None, "the run ended before its first DNN checkpoint"
                assert time.monotonic() < deadline, "no DNN checkpoint within 600 s"
                time.sleep(0.05)
            processes[1].kill()
            processes[1].wait()
            down = time.monotonic()
            output, _ = job.communicate(timeout=600)
            failed_after = time.monotonic() - down
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
        assert "run/stages/dnn.json" not in keys("run/stages/"), "training finished before the endpoint went down"
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert job.returncode != 0 and len(errors) == 1 and "Traceback" not in output, output[-3000:]
        assert f"127.0.0.1:{endpoint_port}" in errors[0] and "during the dnn stage" in errors[0], errors[0]
        assert failed_after < 300, f"the run took {failed_after:.0f} s to give up"

        # The endpoint comes back: the same command resumes training and completes.
        processes[1] = _start_relay(endpoint_port, moto_port)
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        assert "resuming from s3://faults/run/dnn/epoch_" in done.stdout, done.stdout[-3000:]

        stored = keys()
        assert config_from_dict(yaml.safe_load(s3.get_object(Bucket="faults", Key="run/config.yaml")["Body"].read())) == config
        records = sorted(key for key in stored if key.startswith("run/stages/"))
        assert records == sorted(f"run/stages/{stage}.json" for stage in RUN_STAGES)
        for stage in RUN_STAGES:
            assert read_json(f"{run}/stages/{stage}.json")["digest"] == digest(config, stage), stage
        cards = sorted(key for key in stored if key.startswith("run/dnn/epoch_") and key.endswith("/checkpoint.json"))
        assert cards[-1] == f"run/dnn/epoch_{epochs:04d}/checkpoint.json"
        history = json.loads(s3.get_object(Bucket="faults", Key=cards[-1])["Body"].read())["history"]
        assert [entry["epoch"] for entry in history] == list(range(1, epochs + 1))
        assert len(read_json(f"{run}/nmf/objective.json")) == config.nmf.train_iterations
        for split, folder in (("valid", "valid/scores"), ("test", "scores")):
            evaluation = scored_evaluation(config, split)
            with local_copy(f"{run}/{folder}") as local:
                rows = read_scores(local / "scores.parquet")
                scored = config_from_dict(yaml.safe_load((local / "config.yaml").read_text()))
            assert scored == replace(config, evaluation=evaluation)
            found = [(r["method"], r["mask"], round(r["alpha"], 6), r["song_id"]) for r in rows]
            assert len(found) == len(set(found)), f"duplicate {split} scores"
            songs = {r["song_id"] for r in rows}
            assert len(songs) == 1 and set(found) == {
                (m, mode, round(a, 6), song) for m in ("dnn", "nmf", "ibm")
                for mode, alphas in scored_grid(m, evaluation) for a in alphas for song in songs
            }
        assert set(read_json(f"{run}/results.json")["methods"]) == {"dnn", "nmf", "ibm"}
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        for proc in processes:
            proc.kill()
            proc.wait()


def test_manifest_is_refused_when_a_listed_shard_is_gone(tmp_path, small_config):
    """Fault: a finished song's shard vanishes from storage before the manifest is written.
    Expected: `DatasetError` naming the shard, and no manifest."""
    from karaoke.corpora import list_songs
    from karaoke.dataset import DatasetError
    from karaoke.preparation import prepare_song, write_manifest

    song = list_songs(small_config.corpus, "test")[0]
    dataset = tmp_path / "ds"
    status = prepare_song(song, small_config, str(dataset))
    assert status["status"] == "ok"
    (dataset / status["files"][-1]).unlink()
    with pytest.raises(DatasetError, match=f"first: {status['files'][-1]}"):
        write_manifest(str(dataset), small_config, [status])
    assert not (dataset / "manifest.json").exists()


# --- bad input and numerics not covered elsewhere -----------------------------------------------


class _Payload:
    """Unpickling this runs `touch <marker>`: proof that a loader executed the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_or_pickle_bearing_checkpoint_is_refused_and_never_executed(small_config, tmp_path):
    """Fault: (a) a flipped byte in the weights; (b) the weights replaced by a pickle, with the card's
    digest forged to match; (c) a pickled .pt file. Expected: `CheckpointError` naming the file,
    and the pickle's payload never runs."""
    import hashlib
    import pickle

    import torch

    from karaoke.errors import CheckpointError
    from karaoke.models.dnn import build_model, load_dnn, save_dnn

    folder = save_dnn(tmp_path / "ckpt", build_model(small_config), small_config, 1, {"train_loss": 0.1})
    weights, card_path = folder / "model.safetensors", folder / "checkpoint.json"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{weights}: contents do not match the digest .*tampered"):
        load_dnn(folder, small_config)

    marker = tmp_path / "executed"
    weights.write_bytes(pickle.dumps(_Payload(marker)))
    card = json.loads(card_path.read_text())
    card["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    card_path.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=f"{weights}: not a valid safetensors file"):
        load_dnn(folder, small_config)

    torch.save({"payload": _Payload(marker)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="model.pt: .*pickled .pt/.pth files are refused"):
        load_dnn(tmp_path / "model.pt", small_config)
    assert not marker.exists()


def test_silent_mixture_gives_a_defined_mask_and_silent_output(small_config, torch_one_thread):
    """Fault: an all-zero mixture (and one 1e-30 in amplitude). Expected: a finite soft mask in
    [0, 1] and exactly silent (or finite) outputs, no NaN from the unit-scale division."""
    import torch

    from karaoke.models.dnn import build_model
    from karaoke.separate import separate_audio

    torch.manual_seed(0)
    model = build_model(small_config).eval()
    for audio in (np.zeros(16000, np.float32), np.full(16000, 1e-30, np.float32)):
        result = separate_audio(model, audio, small_config, alpha=0.5)
        assert np.isfinite(result.probability).all()
        assert result.probability.min() >= 0 and result.probability.max() <= 1
        assert np.isfinite(result.vocals).all() and np.isfinite(result.accompaniment).all()
    silent = separate_audio(model, np.zeros(16000, np.float32), small_config, alpha=0.5)
    assert not silent.vocals.any() and not silent.accompaniment.any()


def test_silent_reference_scores_are_undefined_not_a_crash(small_config):
    """Fault: a song whose vocal reference is silent, scored over an alpha grid. Expected: every
    score of that song is NaN (BSS-EVAL is undefined there), no exception; the summary's
    confidence interval skips it."""
    from karaoke.metrics import confidence_interval, score_alpha_grid
    from karaoke.spectral import stft

    rng = np.random.default_rng(0)
    accompaniment = (0.3 * rng.standard_normal(16000)).astype(np.float32)
    vocals = np.zeros_like(accompaniment)
    mixture = vocals + accompaniment
    spec = stft(mixture, small_config.stft)
    probability = rng.uniform(size=spec.shape).astype(np.float32)
    rows = score_alpha_grid(spec, probability, np.stack([vocals, accompaniment]), mixture, (0.3, 0.5),
                            small_config.stft, sample_rate=16000)
    assert len(rows) == 2
    assert all(np.isnan(value) for row in rows for key, value in row.items() if key.startswith("vocals_"))
    assert confidence_interval([rows[0]["vocals_sdr"], 3.0, 5.0])[0] == 4.0


SECRET = "karaoke-fake-secret-7f3c1d9e"
PREPARE_AND_TRAIN = """
import sys, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=sys.argv[4])
from karaoke.config import load_config
from pipelines.prepare import prepare_job
from pipelines.train_nmf import train_nmf
config = load_config(sys.argv[1])
assert prepare_job(config, sys.argv[2]) == 0
train_nmf(config, sys.argv[2], sys.argv[3])
"""


@pytest.mark.slow
def test_credentials_never_reach_rays_task_specs_or_logs(s3_endpoint, synth_root, tmp_path):
    """Fault: a secret key in the driver's environment for an s3:// run (Ray Data tasks, Ray Train
    workers). Expected: the run succeeds, and no file of Ray's session folder (task specs, runtime
    environments, logs) holds the secret: every process reads it from its own environment."""
    import shutil
    import tempfile

    import fsspec

    from karaoke.config import save_config

    config = config_from_dict(small_config_dict(
        str(synth_root), nmf={"n_components": 4, "train_iterations": 2, "checkpoint_every": 1},
        resources={"nmf": {"num_workers": 1}},
    ))
    save_config(config, tmp_path / "config.yaml")
    dataset, run_dir = "s3://test-bucket/secret/ds", "s3://test-bucket/secret/nmf"
    ray_dir = tempfile.mkdtemp(prefix="kr-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"AWS_SECRET_ACCESS_KEY": SECRET}
    try:
        done = subprocess.run(
            [sys.executable, "-c", PREPARE_AND_TRAIN, str(tmp_path / "config.yaml"), dataset, run_dir, ray_dir],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert fsspec.filesystem("s3").exists("test-bucket/secret/nmf/bases/checkpoint.json")
        assert SECRET not in done.stdout + done.stderr
        holding = [
            str(path) for path in Path(ray_dir).rglob("*")
            if path.is_file() and not path.is_symlink() and SECRET.encode() in path.read_bytes()
        ]
        assert holding == [], f"the secret is in {holding[:5]}"
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
