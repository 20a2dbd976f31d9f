"""`manage.py serve`'s children never outlive it: SIGKILL serve (no chance to stop
anything) and every process it started (console, worker with its pool and beat,
setup and delegation APIs, etcd member, and their own children) is gone soon after."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.support.node import REPO, free_port, https_get, wait_for

HOST = "127.0.0.41"
GONE_WITHIN = 40.0  # gunicorn's graceful stop and Celery's cold shutdown, with room


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process, None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: pid -> start time (against pid reuse)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _stat(int(entry))) is not None and info[1] != "Z":
            children.setdefault(info[0], []).append(int(entry))
            starts[int(entry)] = info[2]
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = starts[child]
                todo.append(child)
    return found


def alive(pid: int, start: int) -> bool:
    info = _stat(pid)
    return info is not None and info[2] == start and info[1] != "Z"


@pytest.mark.processes
def test_a_sigkilled_serve_leaves_no_process_behind(node_env):
    ports = {name: free_port(HOST) for name in
             ("PAM_SETUP_API_PORT", "PAM_DELEGATION_API_PORT", "PAM_ETCD_CLIENT_PORT", "PAM_ETCD_PEER_PORT")}
    https_port = free_port(HOST)
    node_env.env.update({k: str(v) for k, v in ports.items()},
                        PAM_BIND_ADDRESS=HOST, PAM_HTTPS_PORT=str(https_port), PAM_NODE_ADDRESS=HOST)
    node_env.manage("migrate", "--noinput")
    node_env.manage("tls_ensure")
    data = node_env.data_dir
    # Every cluster process wanted: a CA (the node's own certificate stands in) and,
    # where etcd is installed, a one-member configuration.
    shutil.copy(data / "tls" / "node.crt", data / "tls" / "cluster-ca.crt")
    with_etcd = shutil.which("etcd") is not None
    if with_etcd:
        (data / "etcd").mkdir(mode=0o700, exist_ok=True)
        name = "node-" + HOST.replace(".", "-")
        (data / "etcd" / "member.json").write_text(json.dumps({
            "name": name, "address": HOST, "initial_state": "new", "cluster_token": "pamportal-children-test",
            "initial_cluster": f"{name}=https://{HOST}:{ports['PAM_ETCD_PEER_PORT']}",
        }))
    serve = node_env.spawn([sys.executable, str(REPO / "manage.py"), "serve", "--workers", "1", "--concurrency", "1"],
                           "serve")
    started: dict[int, int] = {}
    try:
        def console_answers():
            if serve.poll() is not None:
                pytest.fail(f"serve exited {serve.returncode}:\n{node_env.log('serve')[-4000:]}")
            try:
                return https_get(f"https://{HOST}:{https_port}/healthz", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(console_answers, timeout=60, interval=0.5, what="the console")

        def everything_running():
            found = descendants(serve.pid)
            lines = [_cmdline(pid) for pid in found]
            wanted = [f"{HOST}:{https_port}", f"{HOST}:{ports['PAM_SETUP_API_PORT']}",
                      f"{HOST}:{ports['PAM_DELEGATION_API_PORT']}", "celery -A pamportal worker"]
            if with_etcd:
                wanted.append("--initial-cluster-token=pamportal-children-test")
            # gunicorn masters with a worker each, the Celery worker with its pool and beat.
            if all(any(w in line for line in lines) for w in wanted) and len(found) >= 2 * 3 + 3 + with_etcd:
                return found
            return None

        started = wait_for(everything_running, timeout=60, interval=0.5, what="all of serve's processes")
        # Once the node has settled (the worker's pool and beat up), take the full tree.
        time.sleep(2)
        started = descendants(serve.pid)
        assert serve.poll() is None, node_env.log("serve")

        os.kill(serve.pid, signal.SIGKILL)
        serve.wait(timeout=10)
        deadline = time.monotonic() + GONE_WITHIN
        while time.monotonic() < deadline and any(alive(pid, start) for pid, start in started.items()):
            time.sleep(0.2)
        left = {pid: _cmdline(pid) for pid, start in started.items() if alive(pid, start)}
        assert not left, f"still running {GONE_WITHIN:g} s after serve was killed: {left}"
    finally:
        for pid, start in started.items():  # whatever the test started and is left
            if alive(pid, start):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
