"""A join into a cluster whose database is replicated makes the follower a streaming
replica of it (issue 11), with real processes on 127.0.0.101-103:

* the leader (.101) is finalised on SQLite, where a follower's checks say the cluster's
  data is not replicated and what to run; then it moves onto its Patroni member
  (``database_to_patroni``) and is served again;
* a follower (.103) whose PostgreSQL base the ``postgres`` user cannot reach joins:
  its basebackup fails, the join is undone (etcd member removed, certificate revoked)
  with the reason on its page, and it stays on SQLite;
* a follower (.102) joins: afterwards Patroni shows a leader and a streaming replica,
  the follower's Django sees a user created on the leader, an event recorded on the
  follower is in the leader's chain, ``audit_verify`` gives one head on both, and the
  follower's pre-join trail is a signed export whose head the leader's chain records.

The tests run in order on the same nodes (module fixture); everything started is
stopped in teardown.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pamportal.replication import process
from tests.cluster.etcd_support import pick_ports
from tests.preflight.support import SntpResponder
from tests.replication.support import missing_tools
from tests.support.cluster import PASSWORD, USERS, cluster_node, etcdctl_members, finalise_leader, run, start
from tests.support.node import REPO, NodeEnv, https_get, start_node, wait_for

pytestmark = [
    pytest.mark.processes,
    pytest.mark.cluster,
    pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or ""),
]
LEADER, FOLLOWER, BROKEN = "127.0.0.101", "127.0.0.102", "127.0.0.103"
FIGURES: dict[str, float] = {}

PAGE = USERS + """
from django.test import Client
from pamportal.accounts.models import TOTPDevice
c = Client(HTTP_HOST=__HOST__)
admin = user('admin', Role.ADMINISTRATOR)
c.force_login(admin, backend="django.contrib.auth.backends.ModelBackend")
s = c.session
s["otp_device_id"] = TOTPDevice.objects.get(user=admin).persistent_id
s.save()
r = c.get("/setup/join/status/", secure=True)
result = [r.status_code, r.content.decode()]
"""


class Lab:
    """The three nodes, each with a PostgreSQL base of its own."""

    def __init__(self, root: Path, ntp: str):
        self.root = root
        self.ntp = ntp
        self.nodes: dict[str, NodeEnv] = {}
        self.bases: list[Path] = []
        self.mek = ""

    def node(self, address: str, *, base: Path | None = None, data_root: Path | None = None) -> NodeEnv:
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="pamportal-rjoin-", dir="/var/tmp"))
            os.chmod(base, 0o711)
            self.bases.append(base)
        pg_port, api_port = pick_ports(address, (5432, 8008))
        env = cluster_node(data_root or self.root, address, self.ntp)
        env.env.update(PAM_POSTGRES_BASE=str(base), PAM_POSTGRES_PORT=str(pg_port), PAM_PATRONI_PORT=str(api_port),
                       PAM_JOIN_WAIT_SECONDS="90")
        env.env.pop("DATABASE_URL", None)  # SQLite before the join: the switch is from it
        self.nodes[address] = env
        return env

    def close(self) -> None:
        errors = []
        for env in self.nodes.values():
            try:
                env.stop()
            except Exception as exc:  # noqa: BLE001 — keep cleaning up
                errors.append(str(exc))
        for base in self.bases:
            for child in base.iterdir() if base.exists() else ():
                paths = process.MemberPaths(child)
                pid = process.postmaster_pid(paths.data_dir)
                if pid:
                    errors.append(f"PostgreSQL {pid} still ran on {paths.data_dir}: killed")
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                    wait_for(lambda: not process.postmaster_pid(paths.data_dir), timeout=20, interval=0.2,
                             what="the postmaster to go")
                process.member_remove(paths)
            shutil.rmtree(base, ignore_errors=True)
        assert not errors, errors


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("rjoin")
    with SntpResponder() as sntp:
        lab = Lab(root, sntp.address)
        try:
            leader = lab.node(LEADER)
            start(leader, LEADER)
            lab.mek = finalise_leader(leader, LEADER, sntp.address)
            wait_for(lambda: run(leader, "from pamportal.cluster.connections import etcd_client\n"
                                         "result = etcd_client().health()[0]"),
                     timeout=60, interval=1, what="the leader's etcd member")
            yield lab
        finally:
            lab.close()
            if FIGURES:
                print("\nreplica join figures: " + ", ".join(f"{k} {v:.1f}" for k, v in FIGURES.items()))


# --- driving a join -------------------------------------------------------------------------
def bundle_for(leader: NodeEnv, address: str, tmp: Path) -> Path:
    bundle = run(leader, USERS + f"""
from pamportal.cluster import bundles as cs
result = str(cs.bundle_generate(user=user('operator', Role.OPERATOR), follower_address={address!r}).bundle_id)
""")

    def bundle_file():
        return run(leader, USERS + f"""
import base64
from pamportal.cluster import bundles as cs
from pamportal.cluster.models import JoiningBundle
b = JoiningBundle.objects.get(bundle_id={bundle!r})
result = base64.b64encode(cs.bundle_download(user=user('operator', Role.OPERATOR), bundle_id=b.bundle_id).data).decode() if b.file else None
""")

    path = tmp / f"{address}-{bundle}.bundle"
    path.write_bytes(__import__("base64").b64decode(wait_for(bundle_file, timeout=30, what="the bundle job")))
    return path


def open_and_check(follower: NodeEnv, address: str, bundle: Path, mek: str) -> dict:
    return run(follower, USERS + f"""
from pathlib import Path
from pamportal.cluster import follower as j
admin = user('admin', Role.ADMINISTRATOR)
j.join_bundle_open(user=admin, data=Path({str(bundle)!r}).read_bytes(), mek_text={mek!r}, own_address={address!r})
checked = j.join_preflight(user=admin)
result = {{"state": checked.state, "replicated": checked.cluster_replicated,
          "failed": [c for c in checked.preflight if not c["ok"]]}}
""")


def check_again(follower: NodeEnv) -> dict:
    return run(follower, USERS + """
from pamportal.cluster import follower as j
checked = j.join_preflight(user=user('admin', Role.ADMINISTRATOR))
result = {"state": checked.state, "replicated": checked.cluster_replicated,
          "failed": [c for c in checked.preflight if not c["ok"]]}
""")


def ask_and_approve(leader: NodeEnv, follower: NodeEnv, address: str, approvers: tuple[str, str]) -> float:
    run(follower, USERS + """
from pamportal.cluster import follower as j
result = j.join_request_send(user=user('admin', Role.ADMINISTRATOR)).request_id
""")
    request_pk = run(leader, f"""
from pamportal.cluster.models import JoinRequest
result = JoinRequest.objects.get(follower_address={address!r}, state="pending").pk
""")
    for approver in approvers:  # approvers who have not voted yet: a TOTP code works once
        run(leader, USERS + f"""
from pamportal.cluster import requests as cs
a = user({approver!r}, Role.APPROVER)
cs.join_request_vote(request_id={request_pk}, user=a, decision="approve", totp_code=code(a))
result = True
""")
    return time.monotonic()


def sqlite_join(follower: NodeEnv) -> dict:
    """The follower's own join row, read from its SQLite file (after the switch its
    Django reads the cluster's database, which has no such row)."""
    with sqlite3.connect(f"file:{follower.data_dir / 'pamportal.sqlite3'}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM setup_followerjoin ORDER BY id DESC LIMIT 1").fetchone()
    return {k: row[k] for k in row.keys()}


def verify_head(env: NodeEnv) -> tuple[int, str]:
    out = env.manage("audit_verify").stdout
    words = out.split()
    return int(words[words.index("position") + 1].rstrip(",")), words[words.index("hash") + 1]


def patroni_cluster(env: NodeEnv, address: str) -> dict:
    return run(env, """
from pamportal.replication.local import node_member
view = node_member().api(timeout=3).cluster()
result = [{"name": m.name, "role": m.role, "state": m.state, "lag": m.lag} for m in view.members]
""")


def leader_move(lab: Lab, address: str = LEADER) -> None:
    """The leader from SQLite onto its Patroni member, as an operator does it: serve
    stopped, its etcd member on its own, ``database_to_patroni``, then serve again."""
    leader = lab.nodes[address]
    for proc in list(leader.processes):
        leader.kill(proc, signal.SIGTERM)
        leader.processes.remove(proc)
    etcd = leader.spawn([sys.executable, str(REPO / "manage.py"), "run_etcd"], "etcd-alone")
    wait_for(lambda: run(leader, "from pamportal.cluster.connections import etcd_client\n"
                                 "result = etcd_client().health()[0]"), timeout=60, interval=1,
             what="the leader's etcd member (run_etcd)")
    started = time.monotonic()
    moved = leader.manage("database_to_patroni", check=False, timeout=300)
    FIGURES["leader move s"] = time.monotonic() - started
    assert moved.returncode == 0, moved.stdout + moved.stderr
    leader.kill(etcd, signal.SIGTERM)
    leader.processes.remove(etcd)
    start_node(leader, host=address, port=8443)
    wait_for(lambda: run(leader, "from django.db import connection\nconnection.ensure_connection()\n"
                                 "result = connection.vendor") == "postgresql", timeout=90, interval=1,
             what="the leader's Django on its PostgreSQL member")


# --- the tests ----------------------------------------------------------------------------------
def test_a_leader_on_sqlite_says_its_data_is_not_replicated(lab):
    """Before the move: the follower's checks learn the cluster is not replicated, and
    its page says so and what to run on the leader. Then the leader moves."""
    follower = lab.node(BROKEN, base=lab.root / "unreachable-pg")  # pytest's tmp: 0700, postgres cannot reach it
    start(follower, BROKEN)
    checked = open_and_check(follower, BROKEN, bundle_for(lab.nodes[LEADER], BROKEN, lab.root), lab.mek)
    assert checked["state"] == "checked", checked["failed"]
    assert checked["replicated"] is False
    status, page = run(follower, PAGE.replace("__HOST__", repr(BROKEN)))
    assert status == 200
    assert 'id="join-not-replicated"' in page and "manage.py database_to_patroni" in page
    assert 'id="join-replaces-local"' not in page

    leader_move(lab)


def test_a_replica_that_cannot_be_made_undoes_the_join(lab):
    leader, follower = lab.nodes[LEADER], lab.nodes[BROKEN]
    # the same bundle, checked again: the leader now says its database is replicated
    checked = check_again(follower)
    assert checked["state"] == "checked", checked["failed"]
    assert checked["replicated"] is True
    status, page = run(follower, PAGE.replace("__HOST__", repr(BROKEN)))
    assert 'id="join-replaces-local"' in page and "replaced by the cluster" in page

    ask_and_approve(leader, follower, BROKEN, ("approver-1", "approver-2"))

    def ended():
        state = run(follower, """
from pamportal.cluster.follower_selectors import join_current
j = join_current()
result = [j.state, j.failure_reason, j.replica_state]
""")
        return state if state[0] in ("failed", "joined") else None

    state, reason, replica_state = wait_for(ended, timeout=240, interval=2, what=f"{BROKEN}'s join to end")
    assert state == "failed", (state, reason)
    assert "database replica failed" in reason and "postgres cannot reach" in reason, reason
    assert replica_state == "failed"

    # the leader undid it: request failed with the reason, etcd member gone, certificate revoked
    undone = run(leader, f"""
from pamportal.audit.models import AuditEvent
from pamportal.cluster.models import JoinRequest, RevokedCertificate
r = JoinRequest.objects.filter(follower_address={BROKEN!r}).order_by('-pk').first()
failed = AuditEvent.objects.filter(action='cluster.join_failed').order_by('-position').first()
result = {{"state": r.state, "reason": r.failure_reason,
          "revoked": RevokedCertificate.objects.filter(serial=r.cert_serial).exists(),
          "event": failed.details if failed else None,
          "report": list(AuditEvent.objects.filter(action='cluster.join_replica_failed').values_list('details', flat=True))}}
""")
    assert undone["state"] == "failed" and "postgres cannot reach" in undone["reason"]
    assert undone["revoked"]
    details = undone["event"] if isinstance(undone["event"], dict) else json.loads(undone["event"])
    assert details["learner_removed"] and details["certificate_revoked"], details
    assert len(undone["report"]) == 1
    peers = [m["peerURLs"][0] for m in etcdctl_members(leader.data_dir, LEADER)]
    assert peers == [f"https://{LEADER}:2380"], peers

    # the follower: on SQLite still, no database.json, no member directory, the reason on its page
    assert not (follower.data_dir / "database.json").exists()
    assert run(follower, "from django.db import connection\nresult = connection.vendor") == "sqlite"
    assert not (lab.root / "unreachable-pg").exists() or not any((lab.root / "unreachable-pg").iterdir())
    status, page = run(follower, PAGE.replace("__HOST__", repr(BROKEN)))
    assert status == 200 and "The join failed" in page and "postgres cannot reach" in page
    follower.stop()


def test_a_follower_joins_as_a_streaming_replica(lab):
    leader = lab.nodes[LEADER]
    follower = lab.node(FOLLOWER)
    base = start(follower, FOLLOWER)
    run(follower, USERS + "user('local-only', Role.OPERATOR)\nresult = True")  # replaced by the cluster's
    checked = open_and_check(follower, FOLLOWER, bundle_for(leader, FOLLOWER, lab.root), lab.mek)
    assert checked["state"] == "checked" and checked["replicated"] is True, checked
    started = ask_and_approve(leader, follower, FOLLOWER, ("approver-3", "approver-4"))

    def switched():
        if (follower.data_dir / "database.json").exists():
            return True
        row = sqlite_join(follower)
        assert row["state"] != "failed", row["failure_reason"]
        return False

    wait_for(switched, timeout=400, interval=2, what=f"{FOLLOWER} to join and switch to the cluster's database")
    FIGURES["join (approved to database.json) s"] = time.monotonic() - started
    row = sqlite_join(follower)
    assert row["state"] == "joined" and row["replica_state"] == "switched", row
    replica = json.loads(row["replica"])
    FIGURES["basebackup to streaming s"] = replica["bootstrap_seconds"]
    written = json.loads((follower.data_dir / "database.json").read_text())
    assert [h["host"] for h in written["hosts"]] == [LEADER, FOLLOWER]

    # the leader's join job: how long its replica step waited (the rest is a join without replica)
    steps = run(leader, f"""
from pamportal.cluster.models import JoinRequest
r = JoinRequest.objects.filter(follower_address={FOLLOWER!r}).order_by('-pk').first()
result = {{s.name: (s.finished_at - s.started_at).total_seconds() for s in r.job.steps.all() if s.finished_at}}
""")
    FIGURES["leader's replica step s"] = steps["replica"]
    FIGURES["leader's other join steps s"] = sum(v for k, v in steps.items() if k != "replica")

    # serve moved the console onto the cluster's database and runs the member: Patroni
    # shows a leader and this follower streaming (a synchronous standby once it caught up)
    def streaming():
        members = {m["name"]: m for m in patroni_cluster(leader, LEADER)}
        mine = members.get(replica["member"])
        leaders = [m for m in members.values() if m["role"] == "leader"]
        return members if leaders and mine and mine["state"] == "streaming" else None

    started = time.monotonic()
    members = wait_for(streaming, timeout=120, interval=2, what="the follower's member streaming under serve")
    FIGURES["switch to streaming under serve s"] = time.monotonic() - started
    assert members[replica["member"]]["role"] in ("sync_standby", "replica"), members
    wait_for(lambda: {m["name"]: m for m in patroni_cluster(leader, LEADER)}[replica["member"]]["role"]
             == "sync_standby", timeout=60, interval=2, what="the follower to be the synchronous standby")

    def console_on_cluster():
        try:
            return https_get(base + "/account/login/", timeout=5)[0] == 200
        except OSError:
            return False

    wait_for(console_on_cluster, timeout=60, interval=1, what="the follower's console after the switch")

    # each node knows which rows of the shared database are its own: the follower calls
    # itself a follower of the real leader, the leader still leads, each shows its own
    # certificate (the database holds the leader's alone)
    assert written["node_address"] == FOLLOWER
    assert json.loads((leader.data_dir / "database.json").read_text())["node_address"] == LEADER
    identity = """
from pamportal.nodes.selectors import certificates_current, node_current
from pamportal.cluster.selectors import node_standing
n = node_current()
st = node_standing()
own = [v for v in certificates_current() if v.title == "This node (HTTPS)"]
r = c.get("/", secure=True)
result = {"address": n.address, "role": n.role, "finalised": n.finalised, "leader": st.leader_address,
          "certificate_names": own[0].names if own else None, "status": r.status_code, "page": r.content.decode()}
"""
    on_follower = run(follower, PAGE.replace("__HOST__", repr(FOLLOWER)) + identity)
    assert on_follower["address"] == FOLLOWER and on_follower["role"] == "follower", on_follower["address"]
    assert on_follower["finalised"] and on_follower["leader"] == LEADER
    assert on_follower["certificate_names"] and FOLLOWER in on_follower["certificate_names"]
    assert LEADER not in on_follower["certificate_names"]
    assert on_follower["status"] == 200
    assert f"follower of {LEADER}" in on_follower["page"], on_follower["page"][:3000]
    assert "This node is the cluster's leader" not in on_follower["page"]
    assert "No valid licence" not in on_follower["page"]
    on_leader = run(leader, PAGE.replace("__HOST__", repr(LEADER)) + identity)
    assert on_leader["address"] == LEADER and on_leader["role"] == "leader" and on_leader["leader"] == ""
    assert LEADER in on_leader["certificate_names"]
    assert on_leader["status"] == 200 and "This node is the cluster's leader" in on_leader["page"]
    assert "follower of" not in on_leader["page"]

    # the cluster's users on the follower, its own local one gone
    run(leader, USERS + "user('dave', Role.OPERATOR)\nresult = True")
    seen = run(follower, """
from django.contrib.auth import get_user_model
from django.db import connection
dave = get_user_model().objects.filter(username='dave').first()
result = {"vendor": connection.vendor, "dave": dave is not None and dave.check_password(%r),
          "local": get_user_model().objects.filter(username='local-only').exists()}
""" % PASSWORD)
    assert seen == {"vendor": "postgresql", "dave": True, "local": False}, seen
    # his second factor, enrolled on the leader, opens on the follower (the cluster's TOTP key)
    totp_key = """
from pamportal.accounts.models import TOTPDevice
result = TOTPDevice.objects.get(user__username='dave').bin_key.hex()
"""
    assert run(follower, totp_key) == run(leader, totp_key)
    assert (follower.data_dir / "totp-seal.key.own").exists()

    # an event recorded through the follower's Django is in the leader's chain
    position = run(follower, """
from django.db import transaction
from pamportal.audit.services import audit_record
with transaction.atomic():
    e = audit_record(action='audit.verified', target='recorded on the follower')
result = e.position
""")
    assert run(leader, f"""
from pamportal.audit.models import AuditEvent
result = AuditEvent.objects.get(position={position}).target
""") == "recorded on the follower"

    # one chain: audit_verify gives the same head on both (other events may land between the two runs)
    def same_head():
        a, b = verify_head(leader), verify_head(follower)
        return a if a == b else None

    head = wait_for(same_head, timeout=30, interval=1, what="the same audit head on both nodes")
    assert head[0] >= position

    # the pre-join trail: a signed export in the follower's data dir that verifies offline,
    # its head and digest recorded in the cluster's chain
    folder = follower.data_dir / "pre-join-audit"
    export = folder / replica["export"]["file"]
    manifest_path = folder / replica["export"]["manifest"]
    assert export.exists() and manifest_path.exists()
    verified = subprocess.run([sys.executable, str(REPO / "tools" / "verify_audit_export.py"), str(export),
                               str(manifest_path)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    manifest = json.loads(manifest_path.read_text())
    assert manifest["contiguous"] and manifest["first"]["position"] == 1
    lines = export.read_text().splitlines()
    assert json.loads(lines[-1])["action"] == "join.audit_sealed"
    assert any(json.loads(line)["action"] == "setup.admin_created" or json.loads(line)["action"] == "user.created"
               for line in lines) or len(lines) > 5
    recorded = run(leader, """
from pamportal.audit.models import AuditEvent
e = AuditEvent.objects.filter(action='cluster.join_replica_ready').order_by('-position').first()
result = e.details
""")
    recorded = recorded if isinstance(recorded, dict) else json.loads(recorded)
    assert recorded["pre_join_head"] == {"position": manifest["last"]["position"], "hash": manifest["last"]["hash"]}
    assert recorded["pre_join_export"]["sha256"] == hashlib.sha256(export.read_bytes()).hexdigest()
    assert recorded["pre_join_export"]["manifest_sha256"] == hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    assert recorded["member"] == replica["member"]

    # leadership moved in Patroni (a switchover, what an approved "set cluster leader"
    # does): within seconds both nodes' workers have recorded it, both consoles say so
    leader_member = patroni_cluster(leader, LEADER)
    leader_name = next(m["name"] for m in leader_member if m["role"] == "leader")
    started = time.monotonic()
    run(leader, f"""
from pamportal.replication.local import node_member
result = node_member().api(timeout=30).switchover(leader={leader_name!r}, candidate={replica["member"]!r})
""")

    def recorded_leader():
        seen = run(follower, PAGE.replace("__HOST__", repr(FOLLOWER)) + identity)
        return seen if seen["role"] == "leader" else None

    on_follower = wait_for(recorded_leader, timeout=60, interval=1, what="the follower recorded as the leader")
    FIGURES["switchover to the records following s"] = time.monotonic() - started
    assert on_follower["leader"] == "" and "This node is the cluster's leader" in on_follower["page"]
    on_leader = run(leader, PAGE.replace("__HOST__", repr(LEADER)) + identity)
    assert on_leader["role"] == "follower" and on_leader["leader"] == FOLLOWER, on_leader["role"]
    assert f"follower of {FOLLOWER}" in on_leader["page"]
    changed = run(leader, """
from pamportal.audit.models import AuditEvent
result = list(AuditEvent.objects.filter(action='cluster.leader_changed').values_list('target', flat=True))
""")
    assert changed == [f"node:{FOLLOWER}"], changed

    # and each node's database.json lists the new leader first (libpq's first try)
    def first_hosts():
        firsts = [json.loads((env.data_dir / "database.json").read_text())["hosts"][0]["host"]
                  for env in (leader, follower)]
        return firsts if firsts == [FOLLOWER, FOLLOWER] else None

    wait_for(first_hosts, timeout=30, interval=1, what="both nodes' database hosts to list the new leader first")


def current_leader(lab: Lab) -> str:
    """The address whose node row says it leads (asked on the third node, always up)."""
    return run(lab.nodes[BROKEN], """
from pamportal.cluster.models import ClusterMember
result = ClusterMember.objects.filter(role="leader", state="active").values_list("address", flat=True).first()
""")


def test_a_backup_of_the_replicated_cluster_proves_it_restores(lab):
    """``manage.py backup`` on a follower: ``pg_dump`` reaches the primary (libpq's
    read-write host), and the proof restores it into a scratch database on it."""
    started = time.monotonic()
    done = lab.nodes[FOLLOWER].manage("backup", check=False, timeout=300)
    FIGURES["backup + proof of the cluster's database s"] = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert "proof: passed" in done.stdout and "head matches the manifest" in done.stdout, done.stdout


def test_a_third_node_joins_the_new_leader(lab):
    """After the switchover above the follower leads: a third node joins it (bundle and
    setup API served by the new leader), so that etcd keeps its quorum when one of
    three goes (the kill and the removal below)."""
    leading = lab.nodes[FOLLOWER]
    assert run(leading, "from pamportal.nodes.selectors import node_current\nresult = node_current().role") == "leader"
    third = lab.node(BROKEN, data_root=lab.root / "third")
    start(third, BROKEN)
    checked = open_and_check(third, BROKEN, bundle_for(leading, BROKEN, lab.root), lab.mek)
    assert checked["state"] == "checked" and checked["replicated"] is True, checked
    ask_and_approve(leading, third, BROKEN, ("approver-7", "approver-8"))

    def third_switched():
        if (third.data_dir / "database.json").exists():
            return True
        row = sqlite_join(third)
        assert row["state"] != "failed", row["failure_reason"]
        return False

    wait_for(third_switched, timeout=400, interval=2, what=f"{BROKEN} to join the new leader")
    wait_for(lambda: len([m for m in patroni_cluster(leading, FOLLOWER) if m["state"] == "streaming"]) == 2,
             timeout=120, interval=2, what="two replicas streaming from the new leader")


WRITER = """
import time
from django.db import connections, transaction
from pamportal.audit.services import audit_record
deadline, n = time.monotonic() + __SECONDS__, 0
while time.monotonic() < deadline:
    n += 1
    try:
        with transaction.atomic():
            e = audit_record(action='audit.verified', target=f'write {n} while the leader dies')
        print(f"ACK {time.time():.3f} {e.position} {e.hash}", flush=True)
    except Exception as exc:
        print(f"ERR {time.time():.3f} {type(exc).__name__}", flush=True)
        connections.close_all()
        time.sleep(0.2)
    time.sleep(0.05)
"""


def node_processes(env: NodeEnv) -> list[int]:
    """Every process of a node: its serve and all serve's descendants (console, worker,
    APIs, etcd, Patroni), and its PostgreSQL with its backends."""
    from tests.core.test_serve_children import descendants

    roots = [p.pid for p in env.processes if p.poll() is None]
    # PostgreSQL's postmaster is started detached by Patroni: found by its pid file
    member = json.loads((env.data_dir / "database.json").read_text())["member"]
    postmaster = process.postmaster_pid(process.member_paths(Path(env.env["PAM_POSTGRES_BASE"]), member).data_dir)
    roots += [postmaster] if postmaster else []
    return [*roots, *(pid for root in roots for pid in descendants(root))]


def test_the_leader_node_killed_while_a_console_writes(lab):
    """The whole leader node SIGKILLed (console, worker, etcd, Patroni and PostgreSQL at
    once) while a client on another node's Django appends audit events: every event it
    saw acknowledged is in the new leader's chain, the chain verifies, the records say
    who leads now, and the killed node comes back as a replica."""
    victim = current_leader(lab)
    killed, third = lab.nodes[victim], lab.nodes[BROKEN]
    writer = third.spawn([sys.executable, str(REPO / "manage.py"), "shell", "-c",
                          WRITER.replace("__SECONDS__", "75")], "writer")

    def acks() -> list[tuple[float, int, str]]:
        return [(float(t), int(p), h) for kind, t, p, h in
                (line.split() for line in third.log("writer").splitlines() if line.startswith("ACK "))]

    wait_for(lambda: len(acks()) >= 10, timeout=60, interval=0.5, what="the writer's first acknowledged events")
    pids = node_processes(killed)
    killed_at = time.time()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in killed.processes:
        proc.wait(timeout=30)
    killed.processes.clear()

    after = wait_for(lambda: [a for a in acks() if a[0] > killed_at][:1], timeout=90, interval=0.5,
                     what="an acknowledged write after the leader node died")
    FIGURES["leader node SIGKILL to a write acknowledged s"] = after[0][0] - killed_at
    new_leader = wait_for(lambda: (lambda a: a if a and a != victim else None)(current_leader(lab)), timeout=30,
                          interval=1, what="the records to name the new leader")
    writer.wait(timeout=120)
    seen = acks()
    errors = [line for line in third.log("writer").splitlines() if line.startswith("ERR ")]
    assert len(seen) > 20 and all(a[1] < b[1] for a, b in zip(seen, seen[1:])), seen[-5:]
    missing = run(third, f"""
from pamportal.audit.models import AuditEvent
seen = {[(p, h) for _, p, h in seen]!r}
stored = dict(AuditEvent.objects.filter(position__in=[p for p, _ in seen]).values_list("position", "hash"))
result = [(p, h) for p, h in seen if stored.get(p) != h]
""")
    assert missing == [], missing  # every acknowledged event, with its hash, in the new leader's chain
    assert third.manage("audit_verify").returncode == 0
    print(f"\nleader {victim} killed: {len(seen)} events acknowledged, {len(errors)} refused meanwhile, "
          f"new leader {new_leader}")

    # the killed node comes back: its etcd and its console, its PostgreSQL as a replica
    start_node(killed, host=victim, port=8443)
    started = time.monotonic()
    wait_for(lambda: len([m for m in patroni_cluster(lab.nodes[new_leader], new_leader)
                          if m["state"] == "streaming"]) == 2,
             timeout=180, interval=2, what="the killed node streaming again")
    FIGURES["killed leader node back as a replica s"] = time.monotonic() - started


def test_a_removed_member_leaves_etcd_patroni_and_at_its_wipe_the_clusters_database(lab):
    """A member that does not lead (one of the first two: the first leader, or the
    node killed above) is removed with approvals: it learns it, its etcd and PostgreSQL
    members stop, Patroni and the other nodes' database hosts no longer list it, and its
    wipe takes it back to its own database, recorded in both chains."""
    leader_address = current_leader(lab)
    gone = LEADER if leader_address != LEADER else FOLLOWER
    stays = next(a for a in (LEADER, FOLLOWER, BROKEN) if a not in (gone, leader_address))
    first, leading = lab.nodes[gone], lab.nodes[leader_address]
    first_member = run(first, "import json\nfrom pathlib import Path\nfrom django.conf import settings\n"
                              "result = json.loads((Path(settings.PAM_DATA_DIR) / 'database.json').read_text())['member']")
    pk = run(leading, USERS + f"""
from pamportal.cluster.models import ClusterMember
from pamportal.cluster.removal import removal_request_create
m = ClusterMember.objects.get(address={gone!r})
result = removal_request_create(user=user('operator', Role.OPERATOR), member_id=m.pk,
                                reason="taken out of service for the test").pk
""")
    # the last vote on a follower's console: the job is the cluster's, so the leader runs it
    # (the removed node accepts a notice from the leader only)
    for approver, console in (("approver-5", leading), ("approver-6", lab.nodes[stays])):
        run(console, USERS + f"""
from pamportal.cluster import requests as cs
a = user({approver!r}, Role.APPROVER)
cs.removal_request_vote(request_id={pk}, user=a, decision="approve", totp_code=code(a))
result = True
""")
    started = time.monotonic()
    told = wait_for(lambda: run(leading, f"""
from pamportal.cluster.models import RemovalRequest
r = RemovalRequest.objects.get(pk={pk})
assert r.state != "failed", r.failure_reason
result = r.node_notified_at is not None and [r.node_notice_detail, r.member.cert_serial]
"""), timeout=90, interval=1, what="the removal job and its notice")
    assert told[0] == "accepted" and told[1], told  # its certificate named (the first leader's too), and revoked
    output = run(leading, f"""
from pamportal.cluster.models import RemovalRequest
result = list(RemovalRequest.objects.get(pk={pk}).job.output.values_list("text", flat=True))
""")
    assert any(f"this node ({stays}) does not lead the cluster" in line for line in output), output
    assert any(f"taken by the cluster's leader ({leader_address})" in line for line in output), output
    assert run(leading, f"""
from pamportal.cluster.models import RevokedCertificate
result = RevokedCertificate.objects.filter(serial={told[1]!r}, address={gone!r}).exists()
""")

    # the removed node: knows it, its etcd and its PostgreSQL member stop, Patroni forgets it
    page = run(first, PAGE.replace("__HOST__", repr(gone)).replace('"/setup/join/status/"', '"/"'))
    assert page[0] == 200 and f"by request {pk}" in page[1] and "removed from cluster" in page[1], page[1][:2000]

    def out_of_patroni():
        names = [m["name"] for m in patroni_cluster(leading, leader_address)]
        return names if first_member not in names else None

    names = wait_for(out_of_patroni, timeout=90, interval=2, what="the removed member to leave Patroni")
    FIGURES["removal approved to out of Patroni s"] = time.monotonic() - started
    assert len(names) == 2, names
    assert "patroni is no longer needed on this node" in first.log("serve")
    peers = sorted(m["peerURLs"][0] for m in etcdctl_members(leading.data_dir, leader_address))
    assert peers == sorted([f"https://{leader_address}:2380", f"https://{stays}:2380"]), peers
    for env in (leading, lab.nodes[stays]):
        wait_for(lambda: [h["host"] for h in json.loads((env.data_dir / "database.json").read_text())["hosts"]]
                 == [leader_address, stays], timeout=30, interval=1, what="the database hosts without the removed member")

    # its wipe: recorded in the cluster's chain, then the node is back on its own database
    wiped = run(first, PAGE.replace("__HOST__", repr(gone)).replace('r = c.get("/setup/join/status/", secure=True)\n'
                                                                      'result = [r.status_code, r.content.decode()]', f"""
wrong = c.post("/cluster/removed/", {{"confirmation": "yes"}}, secure=True)
right = c.post("/cluster/removed/", {{"confirmation": {gone!r}}}, secure=True)
result = [wrong.status_code, right.status_code, right.get("Location", "")]
"""))
    assert wiped == [400, 302, "/setup/"], wiped
    assert not (first.data_dir / "database.json").exists()
    assert len(list(first.data_dir.glob("database.json.left-*"))) == 1
    on_its_own = run(first, """
from django.db import connection
from pamportal.audit.models import AuditEvent
from pamportal.cluster.removed import removal_current
from pamportal.nodes.selectors import node_current
n = node_current()
result = {"vendor": connection.vendor, "finalised": n.finalised, "role": n.role, "removal": removal_current() is None,
          "wiped": AuditEvent.objects.filter(action="node.cluster_state_wiped").count()}
""")
    assert on_its_own == {"vendor": "sqlite", "finalised": False, "role": "standalone", "removal": True, "wiped": 1}
    assert first.manage("audit_verify").returncode == 0
    assert run(leading, """
from pamportal.audit.models import AuditEvent
e = AuditEvent.objects.filter(action="node.cluster_state_wiped").order_by("-position").first()
result = e is not None and e.target
""") == f"node:{gone}"
    assert not (Path(first.env["PAM_POSTGRES_BASE"]) / first_member).exists()  # the member's files went
    wait_for(lambda: "moving the console and the worker back onto its own" in first.log("serve"), timeout=20,
             what="serve to move the removed node back onto its own database")


# --- the report's wire format (no processes) ----------------------------------------------------
def test_the_replica_report_is_parsed_strictly():
    from pamportal.cluster import protocol

    digest = "ab" * 32
    ready = {"outcome": "ready", "reason": "", "member": "node-127-0-0-102", "postgres_port": 5432,
             "pre_join_head": {"position": 12, "hash": digest},
             "export": {"file": "pre-join.jsonl", "manifest": "pre-join.jsonl.manifest.json", "sha256": digest,
                        "manifest_sha256": digest, "key_id": "k1", "events": 12}}
    report = protocol.parse_replica_report(ready)
    assert (report.head_position, report.head_hash, report.postgres_port) == (12, digest, 5432)
    assert protocol.parse_replica_report(report.as_json()) == report
    failed = {"outcome": "failed", "reason": "basebackup failed", "member": "node-127-0-0-102", "postgres_port": None,
              "pre_join_head": None, "export": None}
    assert protocol.parse_replica_report(failed).reason == "basebackup failed"
    broken = [
        ({**ready, "extra": 1}, "unknown field extra"),
        ({k: v for k, v in ready.items() if k != "export"}, "missing field export"),
        ({**ready, "outcome": "maybe"}, "outcome must be one of"),
        ({**ready, "pre_join_head": {"position": 12, "hash": "XY"}}, "SHA-256"),
        ({**ready, "pre_join_head": {"position": True, "hash": digest}}, "whole number"),
        ({**ready, "export": {**ready["export"], "events": 11}}, "whole pre-join trail"),
        ({**ready, "postgres_port": 70000}, "TCP port"),
        ({**ready, "member": "../etc"}, "not a member name"),
        ({**failed, "reason": ""}, "non-empty"),
        ({**failed, "pre_join_head": ready["pre_join_head"]}, "carries no"),
        ([ready], "JSON object"),
    ]
    for body, message in broken:
        with pytest.raises(protocol.ProtocolError) as refused:
            protocol.parse_replica_report(body)
        assert refused.value.code == "bad_request" and message in refused.value.message, (body, refused.value.message)
