"""Running on a cluster: cluster.yaml against Ray's own schema; Ray's fake multi-node autoscaler with
cluster.yaml's worker types (workers appear for a job's requests and leave when idle); and
`ray job submit` of the main job to a local head.

Every Ray started here is a private head (tests/ray_head.py): free ports, its own --temp-dir and
token, stopped through the processes of its own session. Never `ray stop`: it kills every Ray on the
machine, other engineers' included.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.ray_head import RAY, private_head

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"


def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def validate(config: dict) -> dict:
    """What `ray up` checks before it touches the cloud: defaults merged in, then Ray's JSON schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_schema():
    config = cluster_config()
    prepared = validate(config)
    types = config["available_node_types"]
    assert set(types) == {config["head_node_type"], "gpu_worker", "cpu_worker"}
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu, cpu = types["gpu_worker"], types["cpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["resources"]["GPU"] == 1 and gpu["max_workers"] >= 1
    assert cpu["min_workers"] == 0 and "GPU" not in cpu["resources"] and cpu["resources"]["CPU"] >= 1
    assert sum(t.get("max_workers", 0) for t in types.values()) <= prepared["max_workers"]
    # every node installs this project from the mounted checkout
    assert config["file_mounts"]["~/karaoke"] == "."
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        assert "pip install --quiet -e ~/karaoke" in commands
        assert any("torch==" in command for command in commands)
    for command in config["head_start_ray_commands"][-1:] + config["worker_start_ray_commands"][-1:]:
        assert "RAY_AUTH_MODE=token" in command


@pytest.mark.parametrize(
    "where, typo",
    [
        ((), "idle_timeout_minute"),
        (("available_node_types", "gpu_worker"), "min_worker"),
        (("docker",), "run_option"),
    ],
)
def test_misspelt_key_is_rejected(where, typo):
    import jsonschema

    config = cluster_config()
    section = config
    for key in where:
        section = section[key]
    section[typo] = 1
    with pytest.raises(jsonschema.ValidationError, match=typo):
        validate(config)


def test_fractional_gpu_count_is_rejected():
    import jsonschema

    config = cluster_config()
    config["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError, match="integer"):
        validate(config)


def test_cluster_yaml_holds_no_secrets():
    text = CLUSTER_YAML.read_text()
    secret = re.compile(
        r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_session_token|ssh_private_key|PRIVATE KEY"
        r"|RAY_AUTH_TOKEN=|\b[0-9a-f]{64}\b",
        re.IGNORECASE,
    )
    assert secret.findall(text) == []


def fake_cluster_config(gcs_address: str) -> dict:
    """cluster.yaml's node types on Ray's fake multi-node provider: one CPU per worker (the GPU count
    as declared), each node labelled with its type, and a 6 s idle timeout."""
    config = cluster_config()
    head_type = config["head_node_type"]
    types = {head_type: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
    for name, node_type in config["available_node_types"].items():
        if name != head_type:
            types[name] = {
                "resources": {"CPU": 1, **{k: v for k, v in node_type["resources"].items() if k == "GPU"}},
                "labels": {"karaoke/node-type": name},
                "node_config": {},
                "min_workers": node_type["min_workers"],
                "max_workers": min(node_type["max_workers"], 2),
            }
    empty_commands = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")
    return {
        "cluster_name": "karaoke-fake",
        "max_workers": 4,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": head_type,
        "auth": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        **{key: [] for key in empty_commands},
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


# A training step wants a GPU, scoring wants CPUs; the head offers neither, so both need new nodes.
AUTOSCALED_JOB = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)

@ray.remote
def where():
    return {"node": ray.get_runtime_context().get_node_id(), "gpus": ray.get_gpu_ids()}

train = where.options(num_cpus=1, num_gpus=1).remote()
score = where.options(num_cpus=1).remote()
print(json.dumps({"train": ray.get(train), "score": ray.get(score)}))
"""


def node_type(node: dict) -> str:
    return node["labels"].get("karaoke/node-type", "head")


@pytest.mark.slow
def test_autoscaler_adds_cluster_yaml_worker_types_and_removes_them_when_idle(tmp_path):
    head_env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    with private_head("--num-cpus=0", autoscaling_config=fake_cluster_config, env=head_env) as head:
        assert [node_type(n) for n in head.nodes() if n["state"] == "ALIVE"] == ["head"]

        start = time.monotonic()
        out, err = tmp_path / "job.out", tmp_path / "job.err"
        with open(out, "w") as stdout, open(err, "w") as stderr:
            job = subprocess.Popen(
                [sys.executable, "-c", AUTOSCALED_JOB, head.gcs_address], env=head.env, stdout=stdout, stderr=stderr
            )
        seen: dict[str, dict] = {}  # node id -> {"type", "up": s, "down": s} after submission
        job_done = None
        deadline = start + 240
        while time.monotonic() < deadline:
            now = time.monotonic() - start
            for node in head.nodes():
                entry = seen.setdefault(node["node_id"], {"type": node_type(node), "up": now, "down": None})
                if node["state"] == "DEAD" and entry["down"] is None:
                    entry["down"] = now
            if job_done is None and job.poll() is not None:
                job_done = now
            workers = [e for e in seen.values() if e["type"] != "head"]
            if job_done is not None and workers and all(e["down"] is not None for e in workers):
                break
            time.sleep(0.5)
        assert job.wait(timeout=60) == 0, err.read_text()[-3000:]

    result = json.loads(out.read_text().strip().splitlines()[-1])
    types = {node_id: entry["type"] for node_id, entry in seen.items()}
    assert types[result["train"]["node"]] == "gpu_worker" and result["train"]["gpus"] == [0]
    assert types[result["score"]["node"]] in {"cpu_worker", "gpu_worker"}
    workers = {node_id: entry for node_id, entry in seen.items() if entry["type"] != "head"}
    assert {entry["type"] for entry in workers.values()} == {"gpu_worker", "cpu_worker"}
    assert all(entry["down"] is not None for entry in workers.values()), f"workers still up: {seen}"
    up = max(entry["up"] for entry in workers.values())
    down = max(entry["down"] for entry in workers.values())
    kinds = sorted(entry["type"] for entry in workers.values())
    print(f"\n{kinds} up {up:.1f} s after submission; job done {job_done:.1f} s, workers gone {down:.1f} s")


def run_overrides(corpus_root: Path) -> list[str]:
    """The demo config at test size."""
    return [
        f"corpus.root={corpus_root}",
        "corpus.synth_songs=5",
        "corpus.synth_seconds=6",
        "train.epochs=2",
        "resources.dnn.num_workers=1",
        "nmf.train_iterations=5",
        "nmf.test_iterations=5",
        "dnn.hidden_sizes=[64]",
        "evaluation.alphas=[0.3,0.5,0.7]",
    ]


def test_job_overrides_make_a_valid_config(tmp_path):
    from karaoke.config import load_config

    config = load_config(str(REPO / "configs" / "demo.yaml"), run_overrides(tmp_path))
    assert (config.train.epochs, config.dnn.hidden_sizes, config.evaluation.alphas) == (2, (64,), (0.3, 0.5, 0.7))


@pytest.mark.slow
def test_ray_job_submit_runs_the_main_job(tmp_path):
    import pyarrow.parquet as pq
    from ray.job_submission import JobStatus, JobSubmissionClient

    from karaoke.config import load_config

    run_dir = tmp_path / "run"
    entrypoint = [sys.executable, "-m", "karaoke_cli", "run", "--config", "configs/demo.yaml", "--out", str(run_dir)]
    for override in run_overrides(tmp_path / "corpus"):
        entrypoint += ["--set", override]
    runtime_env = {
        "working_dir": str(REPO),
        "excludes": [".git", ".venv", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache"],
        "env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"},
    }
    with private_head("--num-cpus=2") as head:
        assert head.get_status("/api/jobs/", token=False) == 401  # clients need RAY_AUTH_MODE=token
        submission_id = f"karaoke-{uuid.uuid4().hex[:8]}"
        submit = [RAY, "job", "submit", "--address", head.dashboard_url, "--submission-id", submission_id]
        submit += ["--no-wait", "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint]
        done = subprocess.run(submit, env=head.env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

        client = JobSubmissionClient(head.dashboard_url, headers=head.auth_headers)
        deadline = time.monotonic() + 900
        status = client.get_job_status(submission_id)
        while not status.is_terminal() and time.monotonic() < deadline:
            time.sleep(1)
            status = client.get_job_status(submission_id)
        logs = client.get_job_logs(submission_id)
        assert status == JobStatus.SUCCEEDED, f"job {status}:\n{logs[-4000:]}"

    config = load_config(str(run_dir / "config.yaml"))
    assert (config.train.epochs, config.corpus.synth_songs, config.evaluation.alphas) == (2, 5, (0.3, 0.5, 0.7))
    assert (run_dir / "report" / "report.md").read_text().strip()
    scores = pq.read_table(run_dir / "scores" / "scores.parquet").to_pandas()
    assert set(scores["alpha"].round(3)) == {0.3, 0.5, 0.7}
    assert {"ibm", "dnn", "nmf"} <= set(scores["method"])
