"""A private Ray head for tests: `ray start --head --block` as a child in its own session, on free
ports, with its own --temp-dir and its own token, stopped by signalling that session's processes.

`ray stop` is never used: it stops every Ray on the machine (other engineers' tests included).
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# the `ray` script of the running interpreter's environment (the venv), not whatever PATH finds first
RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out as free right now (all held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Head:
    process: subprocess.Popen
    gcs_address: str
    dashboard_url: str
    env: dict[str, str]  # what a client process needs: RAY_AUTH_MODE and this head's token
    log: Path

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}

    def get_status(self, route: str, token: bool = True) -> int:
        """HTTP status of a GET on the dashboard (with or without this head's token)."""
        request = urllib.request.Request(self.dashboard_url + route, headers=self.auth_headers if token else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def nodes(self) -> list[dict]:
        """Every node the GCS knows, dead ones included (state API: node_id, state, labels, ...)."""
        request = urllib.request.Request(f"{self.dashboard_url}/api/v0/nodes?limit=1000", headers=self.auth_headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["data"]["result"]["result"]


def _die_with_parent() -> None:
    # Runs in the child before exec: if pytest itself is killed, the head gets SIGTERM and stops its node.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def session_pids(session: int) -> list[int]:
    """Live (non-zombie) processes of a session, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, session, ...
        if fields[0] != "Z" and int(fields[3]) == session:
            pids.append(int(entry))
    return pids


def stop_session(process: subprocess.Popen, grace_s: float = 60.0) -> None:
    """SIGTERM the `ray start --block` process (it drains and stops its node's processes), then
    SIGKILL whatever is left of its session after `grace_s`."""
    if process.poll() is None:
        process.terminate()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()
        if not session_pids(process.pid):
            break
        time.sleep(0.2)
    for pid in session_pids(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)


@contextmanager
def private_head(
    *args: str,
    autoscaling_config: Callable[[str], dict] | None = None,
    env: dict[str, str] | None = None,
    start_timeout_s: float = 180.0,
) -> Iterator[Head]:
    """Start a head (extra `ray start` args, an autoscaling config built from the GCS address, extra
    environment), wait until its dashboard lists it alive, yield it, and always stop it."""
    # a short temp dir: Ray's unix socket paths under it must fit in 107 bytes
    temp_dir = Path(tempfile.mkdtemp(prefix="kr-", dir="/tmp"))
    gcs_port, dashboard_port, agent_port, client_port = free_ports(4)
    gcs_address = f"127.0.0.1:{gcs_port}"
    full_env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_ADDRESS")}
    full_env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    full_env.update(env or {})
    command = [RAY, "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--port={gcs_port}"]
    command += ["--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
    command += [f"--dashboard-agent-listen-port={agent_port}", f"--ray-client-server-port={client_port}", *args]
    if autoscaling_config is not None:
        config_path = temp_dir / "autoscaling.json"
        config_path.write_text(json.dumps(autoscaling_config(gcs_address)))
        command.append(f"--autoscaling-config={config_path}")
    log = temp_dir / "head.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            command, env=full_env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
    head = Head(process, gcs_address, f"http://127.0.0.1:{dashboard_port}", full_env, log)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ray start exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if any(node["state"] == "ALIVE" for node in head.nodes()):
                    break
            except (OSError, KeyError, ValueError):
                pass  # dashboard not up yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"head not up after {start_timeout_s} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield head
    finally:
        stop_session(process)
        shutil.rmtree(temp_dir, ignore_errors=True)
