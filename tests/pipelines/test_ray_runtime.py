"""pipelines.ray_runtime.connect: where a local cluster listens, and what the console shows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

# Started in a fresh process (its own local cluster): prints the dashboard's port and every
# listening TCP socket (address, port) from /proc/net/tcp.
PROBE = """
import json, ray
from pipelines.ray_runtime import connect
connect()
ray.data.range(4).map_batches(lambda batch: batch).materialize()  # Ray Data logs its executions at INFO
port = int(ray._private.worker.get_dashboard_url().rsplit(":", 1)[1])
sockets = []
for line in open("/proc/net/tcp").read().splitlines()[1:]:
    local, state = line.split()[1], line.split()[3]
    if state == "0A":  # LISTEN
        address, hex_port = local.split(":")
        octets = [str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)]
        sockets.append([".".join(octets), int(hex_port, 16)])
print(json.dumps({"dashboard": port, "sockets": sockets}))
ray.shutdown()
"""


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux's /proc/net/tcp")
def test_a_local_cluster_serves_its_dashboard_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    on_port = {address for address, port in found["sockets"] if port == found["dashboard"]}
    assert on_port == {"127.0.0.1"}
    # Without --verbose the console shows no Ray INFO line (ray.init's, Ray Data's executions).
    assert not re.search(r"\sINFO\s", done.stderr), done.stderr[-2000:]
