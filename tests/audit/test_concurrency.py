"""Concurrent writers in separate processes, on a node database of their own, still
make one unbroken chain; and a real ``manage.py audit_verify`` exits non-zero on damage."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.support.node import REPO

pytestmark = pytest.mark.processes

WRITER = """
import sys
from django.db import transaction
from pamportal.audit.services import audit_record
from pamportal.core.context import acting
# A barrier with the test: say we are ready, then wait for its "go", which it sends
# once every writer is ready, so that they all start appending at the same moment.
print("ready", flush=True)
sys.stdin.readline()
with acting(actor_name="writer-{writer}"):
    for i in range({count}):
        with transaction.atomic():
            audit_record(action="job.started", target="writer-{writer}:" + str(i))
print("appended", {count})
"""


def run_writers(node_env, writers: int, count: int, timeout: float) -> None:
    node_env.manage("migrate", "--noinput", "--skip-checks", timeout=180)
    procs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), "shell", "-c", WRITER.format(writer=w, count=count)],
            cwd=REPO, env=node_env.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(writers)
    ]
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:  # the barrier: every writer has started Django and waits
            line = proc.stdout.readline()
            while line and line.strip() != "ready":
                line = proc.stdout.readline()
            assert line, f"a writer ended before it was ready: {proc.wait(timeout=10)}, {proc.stderr.read()}"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
            assert proc.returncode == 0, err
            assert f"appended {count}" in out
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def head_and_distinct_targets(node_env) -> str:
    return node_env.shell(
        "from pamportal.audit.models import AuditEvent, AuditHead;"
        "print(AuditHead.objects.get(pk=1).position, AuditEvent.objects.values('target').distinct().count())"
    ).strip().splitlines()[-1]


@pytest.mark.postgres
def test_eight_postgres_writers_make_one_chain(node_env):
    run_writers(node_env, writers=8, count=500, timeout=240)
    result = node_env.manage("audit_verify", "--skip-checks", timeout=120)
    assert "verified 4000 events" in result.stdout
    assert head_and_distinct_targets(node_env) == "4000 4000"


def test_sqlite_writers_queue_and_make_one_chain(node_env):
    if node_env.env.get("DATABASE_URL"):
        pytest.skip("the embedded SQLite node only")
    run_writers(node_env, writers=4, count=100, timeout=180)
    result = node_env.manage("audit_verify", "--skip-checks", timeout=120)
    assert "verified 400 events" in result.stdout
    assert head_and_distinct_targets(node_env) == "400 400"


DAMAGE = """
from importlib import import_module
from django.db import connection, transaction
from pamportal.audit.services import audit_record
for i in range(30):
    audit_record(action="auth.login", target="user:" + str(i))
with transaction.atomic(), connection.cursor() as cursor:
    if connection.vendor == "postgresql":
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER ALL")
    else:
        for statement in import_module("pamportal.audit.migrations.0002_append_only").SQLITE_REVERSE:
            cursor.execute(statement)
    cursor.execute("UPDATE audit_auditevent SET target = 'user:nobody' WHERE position = 23")
print("damaged")
"""


def test_audit_verify_exits_non_zero_naming_the_position(node_env):
    node_env.manage("migrate", "--noinput", "--skip-checks", timeout=180)
    assert "damaged" in node_env.shell(DAMAGE)
    result = node_env.manage("audit_verify", "--skip-checks", check=False)
    assert result.returncode != 0
    assert "audit chain broken at position 23:" in result.stderr
    assert "verified" not in result.stdout
