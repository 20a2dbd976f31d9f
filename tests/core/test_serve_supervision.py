"""How `manage.py serve` supervises the cluster processes, one round at a time, with
real short-lived processes: a wanted process that died is started again after its
back-off; one no longer wanted is stopped; and one that exited on its own and stopped
being wanted while it waited for its restart (etcd exits once its peers removed it,
and then the node learns it) is not started again, and serve says so."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import pytest

from pamportal.core.management.commands.serve import Command

SLEEPER = [sys.executable, "-c", "import time; time.sleep(30)"]
QUITTER = [sys.executable, "-c", "pass"]


@pytest.fixture
def command(monkeypatch):
    cmd = Command(stdout=io.StringIO(), stderr=io.StringIO())
    cmd.wanted = {}
    started = []

    def start(name, argv, env=None):
        proc = subprocess.Popen(argv, start_new_session=True)
        started.append((name, proc))
        return proc

    monkeypatch.setattr(cmd, "cluster_commands", lambda without_etcd=False: dict(cmd.wanted))
    monkeypatch.setattr(cmd, "_start", start)
    monkeypatch.setattr(cmd, "_etcd_removed", lambda: False)
    cmd.started = started
    yield cmd
    for _, proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def exited(proc: subprocess.Popen) -> None:
    proc.wait(timeout=10)


def test_a_wanted_process_that_died_is_started_again_after_its_back_off(command):
    command.wanted = {"etcd": (QUITTER, {})}
    processes, restart_after, backoff = {}, {}, {}
    command._supervise_cluster(processes, restart_after, backoff)
    assert [name for name, _ in command.started] == ["etcd"]
    exited(processes["etcd"])

    command._supervise_cluster(processes, restart_after, backoff)
    assert "etcd exited with status 0" in command.stderr.getvalue()
    assert backoff == {"etcd": 2.0} and restart_after["etcd"] > time.monotonic()
    assert "etcd" not in processes and len(command.started) == 1  # waits for its back-off

    restart_after["etcd"] = time.monotonic() - 1  # the back-off is over
    command._supervise_cluster(processes, restart_after, backoff)
    assert len(command.started) == 2 and "etcd" in processes


def test_a_running_process_no_longer_wanted_is_stopped(command):
    command.wanted = {"etcd": (SLEEPER, {})}
    processes, restart_after, backoff = {}, {}, {}
    command._supervise_cluster(processes, restart_after, backoff)
    proc = processes["etcd"]
    assert proc.poll() is None

    command.wanted = {}
    command._supervise_cluster(processes, restart_after, backoff)
    assert processes == {}
    assert proc.wait(timeout=10) is not None
    assert "etcd is no longer needed on this node: stopping it" in command.stdout.getvalue()


def test_a_process_that_exited_and_is_then_no_longer_wanted_is_not_started_again(command):
    command.wanted = {"etcd": (QUITTER, {})}
    processes, restart_after, backoff = {}, {}, {}
    command._supervise_cluster(processes, restart_after, backoff)
    exited(processes["etcd"])
    command._supervise_cluster(processes, restart_after, backoff)  # sees it exit: restart pending
    assert "etcd" in restart_after

    command.wanted = {}  # the node learnt it was removed: the member configuration moved aside
    command._supervise_cluster(processes, restart_after, backoff)
    assert "etcd is no longer needed on this node: not starting it again" in command.stdout.getvalue()
    assert restart_after == {} and backoff == {} and processes == {}

    command._supervise_cluster(processes, restart_after, backoff)
    assert len(command.started) == 1
    assert command.stdout.getvalue().count("no longer needed") == 1  # said once, not every round
