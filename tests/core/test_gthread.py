"""The console's gunicorn worker takes a connection only while one of its threads is
idle, so that clients connecting at once spread over the workers."""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
from collections import Counter

import pytest

from tests.support.node import REPO, free_port, wait_for

pytestmark = pytest.mark.processes

CONNECTIONS = 8
WORKERS, THREADS = 2, 2


def served_by(worker_class: str) -> Counter:
    """Connections per worker pid when CONNECTIONS clients connect at once, each
    sending three requests on its kept-alive connection."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "tests.core.slow_wsgi:app", "--bind", f"127.0.0.1:{port}",
         "--workers", str(WORKERS), "--threads", str(THREADS), "--worker-class", worker_class,
         "--keep-alive", "10", "--no-control-socket"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def answers():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/")
                return conn.getresponse().status == 200
            except OSError:
                return False
        wait_for(answers, timeout=30, what="gunicorn")
        pids: list[set[str]] = [set() for _ in range(CONNECTIONS)]
        start = threading.Barrier(CONNECTIONS)

        def client(i: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            start.wait(timeout=30)
            for _ in range(3):
                conn.request("GET", "/")
                response = conn.getresponse()
                pids[i].add(response.read().decode())
            conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CONNECTIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert all(len(p) == 1 for p in pids), pids  # a kept-alive connection stays with its worker
        return Counter(next(iter(p)) for p in pids)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_connections_arriving_at_once_spread_over_the_workers():
    spread = served_by("pamportal.core.gthread.BalancedThreadWorker")
    assert sum(spread.values()) == CONNECTIONS
    # The first WORKERS * THREADS connections find every worker with idle threads
    # only until its THREADS are busy: no worker can hold more than the rest allow.
    assert len(spread) == WORKERS and max(spread.values()) <= CONNECTIONS - THREADS, spread
