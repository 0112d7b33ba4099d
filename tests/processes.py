"""The test session's own processes, found through /proc, and polling with a deadline: for the
tests that SIGKILL a Ray worker mid-run and check what the job does about it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest


def descendants(prefix: str) -> set[int]:
    """Pids of this process's descendants whose title (Ray's proctitle) starts with `prefix`.

    Ray's local cluster is a child of the test process, so this finds only our own Ray workers,
    never another Ray running on the same machine.
    """
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            titles[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        # the command name in field 2 may hold spaces; the parent pid is the 2nd field after it
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - mine
        mine |= frontier
    return {pid for pid in mine if titles.get(pid, "").startswith(prefix)}


def open_files(pid: int) -> list[str]:
    """The paths of the files process `pid` holds open (none once it has ended)."""
    folder = Path(f"/proc/{pid}/fd")
    paths = []
    try:
        for fd in folder.iterdir():
            try:
                paths.append(os.readlink(fd))
            except OSError:  # closed while we looked
                continue
    except OSError:
        return []
    return paths


def wait_for(condition: Callable[[], bool], job: Future, what: str, seconds: float = 300.0) -> None:
    """Poll `condition` until true; fail if the background job ends first or the deadline passes."""
    deadline = time.monotonic() + seconds
    while not condition():
        if job.done():
            job.result()  # raises the job's own error, if any
            pytest.fail(f"the job finished before {what}")
        assert time.monotonic() < deadline, f"no {what} within {seconds:.0f} s"
        time.sleep(0.05)
