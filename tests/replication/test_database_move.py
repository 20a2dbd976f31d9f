"""``manage.py database_to_patroni`` on a real finalised node (127.0.0.54): refused with
the reason while the console runs, without Patroni, or with its port taken; undone when
the member does not lead in time; then the move itself. Each refusal or failure leaves
the node on SQLite with every table as it was and the attempt recorded; the move keeps
users, licence and the audit chain's head, and the node's Django then works on its
PostgreSQL member, started through ``local.patroni_node_process``.

The tests run in order on one node (module fixture), which is stopped and removed
whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pamportal.replication import local, process
from tests.cluster.etcd_support import pick_ports
from tests.preflight.support import SntpResponder
from tests.replication.support import missing_tools, wait_until
from tests.support.cluster import USERS, finalise_leader, run
from tests.support.node import REPO, NodeEnv, start_node

pytestmark = [
    pytest.mark.processes,
    pytest.mark.cluster,
    pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or ""),
]
ADDRESS = "127.0.0.54"
EVENTS = int(os.environ.get("PAM_TEST_MOVE_EVENTS", "3000"))  # audit events on the node before the move
FIGURES: dict[str, float] = {}


def free_on(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


class MovingNode:
    def __init__(self, root: Path):
        self.pg_base = Path(tempfile.mkdtemp(prefix="pamportal-move-", dir="/var/tmp"))
        os.chmod(self.pg_base, 0o711)
        etcd_client, etcd_peer = pick_ports(ADDRESS)
        self.pg_port, self.api_port = pick_ports(ADDRESS, (5432, 8008))
        self.env = NodeEnv(
            root / "node", PAM_NODE_ADDRESS=ADDRESS, PAM_ETCD_CLIENT_PORT=str(etcd_client),
            PAM_ETCD_PEER_PORT=str(etcd_peer), PAM_POSTGRES_PORT=str(self.pg_port),
            PAM_PATRONI_PORT=str(self.api_port), PAM_POSTGRES_BASE=str(self.pg_base),
            PAM_SETUP_API_PORT=str(free_on(ADDRESS)), PAM_DELEGATION_API_PORT=str(free_on(ADDRESS)),
            PAM_CLIENT_PORT=str(free_on(ADDRESS)), PAM_PREFLIGHT_MIN_CPUS="1", PAM_PREFLIGHT_MIN_MEMORY_GIB="0.5",
            PAM_PREFLIGHT_MIN_DISK_FREE_GIB="0.1", PAM_PREFLIGHT_PROBE_TIMEOUT="1",
        )
        # The move is from SQLite: this node never uses CI's PostgreSQL server.
        self.env.env.pop("DATABASE_URL", None)
        self.member: process.PatroniProcess | None = None
        self.etcd = None

    @property
    def data_dir(self) -> Path:
        return self.env.data_dir

    def move(self, *args: str, **env: str):
        saved = dict(self.env.env)
        self.env.env.update(env)
        try:
            return self.env.manage("database_to_patroni", *args, check=False, timeout=300)
        finally:
            self.env.env = saved

    def close(self) -> None:
        errors = []
        if self.member is not None:
            try:
                process.member_stop(self.member, timeout=30)
            except Exception as exc:  # noqa: BLE001 — keep cleaning up
                errors.append(str(exc))
        try:
            self.env.stop()
        except Exception as exc:  # noqa: BLE001
            errors.append(str(exc))
        for child in self.pg_base.iterdir() if self.pg_base.exists() else ():
            try:
                process.member_remove(process.MemberPaths(child))
            except Exception as exc:  # noqa: BLE001
                errors.append(str(exc))
        shutil.rmtree(self.pg_base, ignore_errors=True)
        assert not errors, errors


STATE = """
import hashlib
from django.apps import apps
from django.db import connection
from pamportal.audit.models import AuditEvent
tables = {}
for m in apps.get_models(include_auto_created=True):
    t = m._meta.db_table
    if t.startswith('audit_') or not m._meta.managed or m._meta.proxy:
        continue
    names = [f.attname for f in m._meta.local_concrete_fields]
    rows = [tuple(json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for v in row)
            for row in m._base_manager.order_by(m._meta.pk.attname).values_list(*names)]
    tables[t] = [len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()]  # jsonb: keys compared sorted
events = list(AuditEvent.objects.order_by('position').values_list('position', 'action', 'hash'))
from django.contrib.auth import get_user_model
from pamportal.licensing.models import Licence
result = {'vendor': connection.vendor, 'tables': tables, 'events': events,
          'users': sorted(get_user_model().objects.values_list('username', 'password', 'role', 'is_active')),
          'licences': sorted(Licence.objects.values_list('licence_id', 'customer', 'not_after')),
          'last': json.loads(AuditEvent.objects.order_by('-position').values_list('details', flat=True).first()),
          'last_action': AuditEvent.objects.order_by('-position').values_list('action', flat=True).first()}
"""


def verify_head(env: NodeEnv) -> tuple[int, str]:
    out = env.manage("audit_verify").stdout
    words = out.split()
    return int(words[words.index("position") + 1].rstrip(",")), words[words.index("hash") + 1]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    moving = MovingNode(tmp_path_factory.mktemp("move"))
    try:
        with SntpResponder() as sntp:
            start_node(moving.env, host=ADDRESS, port=free_on(ADDRESS))
            run(moving.env, USERS + "user('admin', Role.ADMINISTRATOR)\nresult = True")
            finalise_leader(moving.env, ADDRESS, sntp.address)
        run(moving.env, USERS + f"""
from django.db import transaction
from pamportal.audit.services import audit_record
for name, role in (('alice', Role.OPERATOR), ('bob', Role.AUDITOR), ('carol', Role.VIEWER)):
    user(name, role)
with transaction.atomic():
    for i in range({EVENTS}):
        audit_record(action='audit.verified', target=f'load {{i}}', details={{'i': i, 'text': 'é ☃'}})
result = True
""")
        wait_until(lambda: run(moving.env, """
from pamportal.cluster.connections import etcd_client
result = etcd_client().health()[0]
"""), 60, interval=1, what="the node's etcd member (run by serve)")
        FIGURES["events"] = EVENTS
        yield moving
    finally:
        moving.close()
        if FIGURES:
            print("\nmove figures: " + ", ".join(f"{k} {v:.2f}" for k, v in FIGURES.items()))


def assert_unchanged(moving: MovingNode, before: dict, reason: str) -> dict:
    """Still on SQLite, every table as it was, the earlier chain intact and verifying,
    the attempt recorded as the last event with its reason; no member left behind."""
    after = run(moving.env, STATE)
    assert after["vendor"] == "sqlite"
    assert after["tables"] == before["tables"]
    assert after["events"][: len(before["events"])] == before["events"]
    assert after["last_action"] == "database.move_failed" and reason in after["last"]["reason"], after["last"]
    assert not (moving.data_dir / "database.json").exists()
    assert (moving.data_dir / "pamportal.sqlite3").exists()
    assert list(moving.pg_base.iterdir()) == []
    verify_head(moving.env)
    return after


def test_refused_while_the_console_runs_and_without_patroni(node):
    before = run(node.env, STATE)
    refused = node.move()
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "other processes have the SQLite database open" in refused.stderr and "serve" in refused.stderr
    before = assert_unchanged(node, before, "other processes have the SQLite database open")

    # the console and worker stop; the etcd member runs on its own, as its unit would
    serve = node.env.processes[0]
    node.env.kill(serve, signal.SIGTERM)
    node.env.processes.remove(serve)
    node.etcd = node.env.spawn([sys.executable, str(REPO / "manage.py"), "run_etcd"], "etcd")
    wait_until(lambda: run(node.env, """
from pamportal.cluster.connections import etcd_client
result = etcd_client().health()[0]
"""), 60, interval=1, what="the node's etcd member (run_etcd)")

    refused = node.move(PAM_PATRONI_VENV="/nonexistent/patroni")
    assert refused.returncode == 2
    assert "Patroni was not found at /nonexistent/patroni/bin/patroni" in refused.stderr
    assert "bash tools/patroni_env.sh" in refused.stderr
    assert_unchanged(node, before, "Patroni was not found")


def test_refused_when_the_postgres_port_is_taken(node):
    before = run(node.env, STATE)
    with socket.socket() as squatter:
        squatter.bind((ADDRESS, node.pg_port))
        squatter.listen(1)
        refused = node.move()
    assert refused.returncode == 2
    assert f"port {node.pg_port} on {ADDRESS} (PostgreSQL" in refused.stderr and "already in use" in refused.stderr
    assert_unchanged(node, before, "already in use")


def test_a_member_that_does_not_lead_in_time_is_undone(node):
    before = run(node.env, STATE)
    failed = node.move("--timeout", "1")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "did not lead within 1 s" in failed.stderr
    assert "The node is still on SQLite, as before; the new member was stopped and removed" in failed.stderr
    assert_unchanged(node, before, "did not lead within 1 s")
    # and nothing of it is left in etcd for a later try to trip over
    count = run(node.env, """
from pamportal.cluster.connections import etcd_client
from pamportal.replication import local
result = local.patroni_keys_count(etcd_client(), local.cluster_id())
""")
    assert count == 0


def test_move_keeps_users_licence_and_the_audit_head(node):
    before = run(node.env, STATE)
    head_before = verify_head(node.env)
    started = time.monotonic()
    moved = node.move()
    FIGURES["move seconds"] = time.monotonic() - started
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "moved:" in moved.stdout, moved.stdout

    database_file = node.data_dir / "database.json"
    assert database_file.stat().st_mode & 0o777 == 0o600
    settings = json.loads(database_file.read_text())
    assert settings["hosts"] == [{"host": ADDRESS, "port": node.pg_port}]
    kept = Path(settings["sqlite_kept"])
    assert kept.exists() and kept.parent == node.data_dir and kept.name.startswith("pamportal.sqlite3.moved-")
    assert not (node.data_dir / "pamportal.sqlite3").exists()

    # the kept SQLite ends with the move's start, at the head the move verified
    with sqlite3.connect(f"file:{kept}?mode=ro", uri=True) as old:
        old_head = old.execute("SELECT position, hash FROM audit_audithead").fetchone()
        old_last = old.execute("SELECT action FROM audit_auditevent ORDER BY position DESC LIMIT 1").fetchone()[0]
    assert old_last == "database.move_started" and old_head[0] == head_before[0] + 1

    # the node's supervisor would run the member now: start it as it would
    member_process = local.patroni_node_process(data_dir=node.data_dir, base=node.pg_base)
    assert member_process is not None and member_process.member == settings["member"]
    node.member = local.node_member_start(member_process)
    started = time.monotonic()
    wait_until(lambda: run(node.env, "from django.db import connection\nconnection.ensure_connection()\n"
                                     "result = connection.vendor") == "postgresql",
               90, interval=1, what="the node's Django on its PostgreSQL member (read-write)")
    FIGURES["member start to Django connected"] = time.monotonic() - started

    after = run(node.env, STATE)
    assert after["vendor"] == "postgresql"
    assert after["users"] == before["users"] and len(after["users"]) >= 4
    assert after["licences"] == before["licences"] and len(after["licences"]) == 1
    assert after["tables"] == before["tables"]
    assert after["events"][: len(before["events"])] == before["events"]
    assert after["last_action"] == "database.moved"
    assert (after["last"]["head_position"], after["last"]["head_hash"]) == tuple(old_head)
    assert after["last"]["sqlite_kept"] == str(kept)

    # audit_verify on PostgreSQL: the move's head, then the success event on top of it
    position, digest = verify_head(node.env)
    assert position == old_head[0] + 1
    # audit_verify on the kept SQLite (a scratch node on a copy) gives the same head
    scratch = NodeEnv(node.data_dir.parent / "scratch")
    scratch.env.pop("DATABASE_URL", None)
    try:
        shutil.copy(kept, scratch.data_dir / "pamportal.sqlite3")
        assert verify_head(scratch) == tuple(old_head)
    finally:
        scratch.stop()

    # a new event appends on PostgreSQL and the chain verifies; the table stays append-only
    out = run(node.env, """
from django.db import transaction, DatabaseError
from pamportal.audit.models import AuditEvent
from pamportal.audit.services import audit_record
with transaction.atomic():
    event = audit_record(action='audit.verified', target='after the move')
refused = []
for attempt in ("AuditEvent.objects.filter(position=1).update(actor_name='x')",
                "AuditEvent.objects.filter(position=1).delete()"):
    try:
        with transaction.atomic():
            eval(attempt)
    except DatabaseError as exc:
        refused.append(str(exc).splitlines()[0])
from django.db import connection
with connection.cursor() as c:
    c.execute("SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'audit_auditevent'::regclass AND NOT tgisinternal")
    triggers = sorted(c.fetchall())
result = {'position': event.position, 'refused': refused, 'triggers': triggers}
""")
    assert out["position"] == position + 1
    assert len(out["refused"]) == 2 and all("append-only" in r for r in out["refused"]), out["refused"]
    assert out["triggers"] == [["audit_event_no_delete", "A"], ["audit_event_no_truncate", "A"],
                               ["audit_event_no_update", "A"]]
    assert verify_head(node.env)[0] == position + 1

    # a second run says there is nothing to move
    again = node.move()
    assert again.returncode == 2 and "already runs on PostgreSQL" in again.stderr


def test_serve_runs_the_member_for_the_console_and_stops_it_last(node):
    """After the move, `serve` (as `make run` starts it) starts the member as its user
    before the console; the console's pages read PostgreSQL; stopping serve stops the
    console first and PostgreSQL with it."""
    from tests.support.node import https_get

    if node.member is not None:  # the previous test's member, started by hand
        process.member_stop(node.member, timeout=30)
        node.member = None
    member_process = local.patroni_node_process(data_dir=node.data_dir, base=node.pg_base)
    data_dir = process.MemberPaths(member_process.working_dir).data_dir
    assert process.postmaster_pid(data_dir) is None
    base = start_node(node.env, host=ADDRESS, port=free_on(ADDRESS))

    def login_page() -> bool:  # anonymous: the first-boot check reads the database
        try:
            return https_get(base + "/account/login/", timeout=5)[0] == 200
        except OSError:
            return False

    wait_until(login_page, 90, interval=1, what="the console on the member started by serve")
    out = run(node.env, "from django.contrib.auth import get_user_model\nfrom django.db import connection\n"
                        "result = [connection.vendor, get_user_model().objects.count()]")
    assert out[0] == "postgresql" and out[1] >= 4
    pid = process.postmaster_pid(data_dir)
    assert pid is not None and Path(f"/proc/{pid}").stat().st_uid == process.RunAs.for_this_process().uid
    node.env.stop()
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 60, interval=0.5, what="PostgreSQL stopped with serve")
    assert process.postmaster_pid(data_dir) is None
