"""A node removed from a real three-node cluster knows it was removed (issue 16).

Three real nodes (console, worker, etcd member each, under ``manage.py serve``): a
follower's removal is approved while it is up, or while it is down and it starts
later. In both, the follower's ``serve`` stops restarting its etcd member within 10 s
of the node learning it (the leader's notice, or etcd's member list), its pages say
"removed from cluster <id> on <date> by request <n>", and after the wipe (typed
confirmation) it joins again with a new bundle and becomes a voting member.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest

from tests.preflight.support import SntpResponder
from tests.support.cluster import USERS, cluster_node, etcdctl_members, finalise_leader, port_free, run, start
from tests.support.node import NodeEnv, start_node, wait_for

pytestmark = [pytest.mark.processes, pytest.mark.cluster]

LIMIT_SECONDS = 10.0
# How long nothing may start etcd again once it stopped: longer than serve's back-off
# after a few restarts (2, 4, 8 s), the longest a restart would have waited here.
QUIET_SECONDS = 20.0

PAGE = USERS + """
from django.test import Client
from pamportal.accounts.models import TOTPDevice
c = Client(HTTP_HOST=__HOST__)
admin = user('admin', Role.ADMINISTRATOR)
c.force_login(admin, backend="django.contrib.auth.backends.ModelBackend")
s = c.session
s["otp_device_id"] = TOTPDevice.objects.get(user=admin).persistent_id
s.save()
"""


def etcd_pids(env: NodeEnv) -> list[int]:
    """The etcd processes of this node (its member's data dir is on their command line)."""
    marker = f"--data-dir={env.data_dir / 'etcd' / 'data'}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline.split(b"\0"):
            pids.append(int(entry))
    return pids


def removal_facts(env: NodeEnv) -> dict | None:
    return run(env, """
from pamportal.cluster.removed import removal_current
r = removal_current()
result = None if r is None else {"learned_at": r.learned_at.timestamp(), "source": r.source,
                                  "request_number": r.request_number, "cluster_id": r.cluster_id}
""")


def pages(env: NodeEnv, address: str) -> dict[str, str]:
    return run(env, PAGE.replace("__HOST__", repr(address)) + """
result = {}
for url in ("/", "/cluster/", "/jobs/", "/setup/join/status/"):
    r = c.get(url, secure=True)
    result[url] = f"{r.status_code} " + r.content.decode()
""")


def join(leader: NodeEnv, follower: NodeEnv, address: str, mek_text: str, tmp_path: Path, approvers) -> None:
    """Bundle on the leader, open + check + request on the follower, two approvals (by
    approvers who have not voted yet: a TOTP code works once)."""
    bundle = run(leader, USERS + f"""
from pamportal.cluster import bundles as cs
operator = user('operator', Role.OPERATOR)
result = str(cs.bundle_generate(user=operator, follower_address={address!r}).bundle_id)
""")

    def bundle_file():
        return run(leader, USERS + f"""
import base64
from pamportal.cluster import bundles as cs
from pamportal.cluster.models import JoiningBundle
b = JoiningBundle.objects.get(bundle_id={bundle!r})
result = base64.b64encode(cs.bundle_download(user=user('operator', Role.OPERATOR), bundle_id=b.bundle_id).data).decode() if b.file else None
""")

    path = tmp_path / f"{address}-{bundle}.bundle"
    path.write_bytes(base64.b64decode(wait_for(bundle_file, timeout=30, what="the bundle job")))

    def checked():
        return run(follower, USERS + f"""
from pathlib import Path
from pamportal.cluster import follower as j
from pamportal.cluster.follower_selectors import join_current
admin = user('admin', Role.ADMINISTRATOR)
if join_current() is None or join_current().state == "failed":
    j.join_bundle_open(user=admin, data=Path({str(path)!r}).read_bytes(), mek_text={mek_text!r}, own_address={address!r})
checked = j.join_preflight(user=admin)
result = checked.state == "checked" or [c for c in checked.preflight if not c["ok"]]
""")

    # A node that was just wiped frees its ports within a second or two.
    assert wait_for(lambda: checked() is True, timeout=30, interval=1, what=f"{address}'s checks against the leader")
    run(follower, USERS + """
from pamportal.cluster import follower as j
result = j.join_request_send(user=user('admin', Role.ADMINISTRATOR)).request_id
""")
    request_pk = run(leader, f"""
from pamportal.cluster.models import JoinRequest
result = JoinRequest.objects.get(follower_address={address!r}, state="pending").pk
""")
    vote(leader, "join", request_pk, approvers)

    def joined():
        return run(follower, """
from pamportal.cluster.follower_selectors import join_current
j = join_current()
assert j.state != "failed", j.failure_reason
result = j.state == "joined"
""")

    wait_for(joined, timeout=150, interval=1, what=f"{address} to join")


def vote(leader: NodeEnv, kind: str, pk: int, approvers) -> None:
    for approver in approvers:
        run(leader, USERS + f"""
from pamportal.cluster import requests as cs
a = user({approver!r}, Role.APPROVER)
cs.{kind}_request_vote(request_id={pk}, user=a, decision="approve", totp_code=code(a))
result = True
""")


def request_removal(leader: NodeEnv, address: str, approvers) -> tuple[int, float]:
    """Ask for the removal on the leader and approve it; (request number, when approved)."""
    pk = run(leader, USERS + f"""
from pamportal.cluster.models import ClusterMember
from pamportal.cluster.removal import removal_request_create
m = ClusterMember.objects.get(address={address!r})
result = removal_request_create(user=user('operator', Role.OPERATOR), member_id=m.pk,
                                reason="taken out of service for the test").pk
""")
    vote(leader, "removal", pk, approvers)
    return pk, time.time()


def form_cluster(tmp_path, addresses, ntp):
    nodes = {address: cluster_node(tmp_path, address, ntp) for address in addresses}
    for address, env in nodes.items():
        start(env, address)
    leader_address = addresses[0]
    mek_text = finalise_leader(nodes[leader_address], leader_address, ntp)
    wait_for(lambda: run(nodes[leader_address], """
from pamportal.cluster.connections import etcd_client
result = etcd_client().health()[0]
"""), timeout=60, interval=1, what="the leader's etcd member")
    for index, address in enumerate(addresses[1:]):
        join(nodes[leader_address], nodes[address], address, mek_text, tmp_path,
             approvers=(f"approver-{2 * index + 1}", f"approver-{2 * index + 2}"))
    return nodes, mek_text


def etcd_stays_stopped(env: NodeEnv, learned_at: float) -> float:
    """Seconds from learning the removal until this node had no etcd process, checked
    to stay so for QUIET_SECONDS (serve no longer restarts it)."""
    stopped_at = wait_for(lambda: time.time() if not etcd_pids(env) else None, timeout=30, interval=0.1,
                          what="the removed node's etcd member to stop")
    deadline = time.time() + QUIET_SECONDS
    while time.time() < deadline:
        assert not etcd_pids(env), "serve started the removed node's etcd member again"
        time.sleep(0.2)
    return max(0.0, stopped_at - learned_at)


def says_removed(env: NodeEnv, address: str, cluster_id: str, request_number: int) -> None:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    expected = f"removed from cluster {cluster_id} on {today} by request {request_number}"
    for url, page in pages(env, address).items():
        assert page.startswith("200 "), (url, page[:300])
        assert expected in page, (url, page[:2000])
        assert "This node is a voting member" not in page, url  # the job log keeps its history


def wipe_and_rejoin(nodes, leader_address, address, mek_text, tmp_path, approvers) -> None:
    env = nodes[address]
    answer = run(env, PAGE.replace("__HOST__", repr(address)) + f"""
wrong = c.post("/cluster/removed/", {{"confirmation": "yes"}}, secure=True)
right = c.post("/cluster/removed/", {{"confirmation": {address!r}}}, secure=True)
result = [wrong.status_code, right.status_code, right.get("Location", "")]
""")
    assert answer == [400, 302, "/setup/"], answer
    # The cluster listeners stop once the CA file is gone; the etcd member is gone already.
    for port in (2379, 2380, 2390, 2391):
        wait_for(lambda: port_free(address, port), timeout=20, what=f"port {port} on the wiped node to be free")
    join(nodes[leader_address], env, address, mek_text, tmp_path, approvers=approvers)
    members = etcdctl_members(nodes[leader_address].data_dir, leader_address)
    assert len(members) == 3 and not any(m.get("isLearner") for m in members), members
    assert all(m.get("name") and m.get("clientURLs") for m in members), members
    assert f"https://{address}:2380" in [m["peerURLs"][0] for m in members]
    assert wait_for(lambda: etcd_pids(env), timeout=10, what="the rejoined node's etcd member")
    assert removal_facts(env) is None
    page = pages(env, address)["/"]
    assert "removed from cluster" not in page


def test_removal_approved_while_the_node_is_up(tmp_path):
    addresses = ("127.0.0.61", "127.0.0.62", "127.0.0.63")
    leader_address, removed_address = addresses[0], addresses[2]
    with SntpResponder() as sntp:
        nodes, mek_text = {}, ""
        try:
            nodes, mek_text = form_cluster(tmp_path, addresses, sntp.address)
            env = nodes[removed_address]
            assert etcd_pids(env)
            pk, approved_at = request_removal(nodes[leader_address], removed_address, ("approver-5", "approver-6"))
            facts = wait_for(lambda: removal_facts(env), timeout=30, interval=0.5, what="the node to learn it")
            assert facts["source"] == "leader" and facts["request_number"] == pk
            print(f"\nup: approval -> node knows: {facts['learned_at'] - approved_at:.1f} s")
            seconds = etcd_stays_stopped(env, facts["learned_at"])
            print(f"up: node knows -> serve no longer runs etcd: {seconds:.1f} s "
                  f"(then none for {QUIET_SECONDS:.0f} s)")
            assert seconds <= LIMIT_SECONDS
            # Whichever came first, serve says why it no longer runs etcd: it stopped the
            # member, or the member had exited (its peers removed it) and is not restarted.
            log = env.log("serve")
            assert ("etcd is no longer needed on this node" in log
                    or "etcd: this node was removed from the cluster; its member is not started again" in log), log
            members = etcdctl_members(nodes[leader_address].data_dir, leader_address)
            assert len(members) == 2, members
            says_removed(env, removed_address, facts["cluster_id"], pk)
            wipe_and_rejoin(nodes, leader_address, removed_address, mek_text, tmp_path, ("approver-7", "approver-8"))
        finally:
            for node in nodes.values():
                node.stop()


def test_removal_approved_while_the_node_is_down_and_it_starts_later(tmp_path):
    addresses = ("127.0.0.64", "127.0.0.65", "127.0.0.66")
    leader_address, removed_address = addresses[0], addresses[2]
    with SntpResponder() as sntp:
        nodes, mek_text = {}, ""
        try:
            nodes, mek_text = form_cluster(tmp_path, addresses, sntp.address)
            env = nodes[removed_address]
            env.stop(keep_database=True)  # serve, its console, worker and etcd member: down, not gone
            wait_for(lambda: not etcd_pids(env), timeout=30, what="the node to be down")
            pk, _ = request_removal(nodes[leader_address], removed_address, ("approver-5", "approver-6"))
            state = wait_for(lambda: run(nodes[leader_address], f"""
from pamportal.cluster.models import RemovalRequest
r = RemovalRequest.objects.get(pk={pk})
result = r.state == "joined" and [r.node_notified_at, r.node_notice_detail]
"""), timeout=60, interval=1, what="the removal job")
            assert state[0] is None, state  # the node is down: not told yet
            assert len(etcdctl_members(nodes[leader_address].data_dir, leader_address)) == 2

            started = time.time()
            start_node(env, host=removed_address, port=8443)
            facts = wait_for(lambda: removal_facts(env), timeout=60, interval=0.5, what="the node to learn it")
            print(f"\ndown: node started -> node knows ({facts['source']}): {facts['learned_at'] - started:.1f} s")
            seconds = etcd_stays_stopped(env, facts["learned_at"])
            print(f"down: node knows -> serve no longer runs etcd: {seconds:.1f} s "
                  f"(then none for {QUIET_SECONDS:.0f} s)")
            assert seconds <= LIMIT_SECONDS
            # The leader's notice follows (the heartbeat task retries every 30 s).
            told = wait_for(lambda: (removal_facts(env) or {}).get("request_number"), timeout=75, interval=1,
                            what="the leader's notice to reach the node")
            assert told == pk
            print(f"down: node started -> the leader's notice received: {time.time() - started:.1f} s")
            says_removed(env, removed_address, facts["cluster_id"], pk)
            wipe_and_rejoin(nodes, leader_address, removed_address, mek_text, tmp_path, ("approver-7", "approver-8"))
        finally:
            for node in nodes.values():
                node.stop()
