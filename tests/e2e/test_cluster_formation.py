"""Three real nodes on 127.0.0.11, .12 and .13, each with its own data dir, database,
worker and etcd member: the leader finalises, generates two bundles, both followers
join, each join approved by two approvers who are not the requester; then etcd's own
client lists three started voting members and the cluster page tolerates 1 failure."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import pytest

from tests.preflight.support import SntpResponder
from tests.support.cluster import USERS, cluster_node, etcdctl_members, finalise_leader, run, start
from tests.support.node import wait_for

pytestmark = [pytest.mark.processes, pytest.mark.cluster]

LEADER, FOLLOWERS = "127.0.0.11", ("127.0.0.12", "127.0.0.13")


def _get(url: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def assert_listeners_answer_only_their_own(data_dir) -> None:
    """The delegation API takes only cluster-CA client certificates; each port answers
    only its own paths."""
    tls = data_dir / "tls"
    anonymous = ssl.create_default_context(cafile=str(tls / "cluster-ca.crt"))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
        _get(f"https://{LEADER}:2391/api/delegation/v1/heartbeat", anonymous)
    node = ssl.create_default_context(cafile=str(tls / "cluster-ca.crt"))
    node.load_cert_chain(str(tls / "node.crt"), str(tls / "node.key"))
    status, body = _get(f"https://{LEADER}:2391/api/delegation/v1/heartbeat", node)
    assert status == 200 and json.loads(body)["role"] == "leader"
    assert _get(f"https://{LEADER}:2390/api/setup/v1/time", anonymous)[0] == 200
    assert _get(f"https://{LEADER}:2390/account/login/", anonymous)[0] == 404
    assert _get(f"https://{LEADER}:8443/api/setup/v1/time", anonymous)[0] == 404


def join(leader, follower, address: str, mek_text: str, tmp_path, *, code_offset: int) -> None:
    """Bundle on the leader, open + check + request on the follower, two approvals."""
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

    data = wait_for(bundle_file, timeout=30, what="the bundle job")
    path = tmp_path / f"{address}.bundle"
    path.write_bytes(__import__("base64").b64decode(data))

    state = run(follower, USERS + f"""
from pathlib import Path
from pamportal.cluster import follower as j
admin = user('admin', Role.ADMINISTRATOR)
j.join_bundle_open(user=admin, data=Path({str(path)!r}).read_bytes(), mek_text={mek_text!r}, own_address={address!r})
checked = j.join_preflight(user=admin)
assert checked.state == "checked", checked.preflight
result = j.join_request_send(user=admin).request_id
""")
    assert state

    request_pk = run(leader, f"""
from pamportal.cluster.models import JoinRequest
result = JoinRequest.objects.get(follower_address={address!r}, state="pending").pk
""")
    for approver in ("approver-1", "approver-2"):
        run(leader, USERS + f"""
from pamportal.cluster import requests as cs
a = user({approver!r}, Role.APPROVER)
# A code works once: each vote takes the next time step's code (TOTP tolerance 1).
cs.join_request_vote(request_id={request_pk}, user=a, decision="approve", totp_code=code(a, {code_offset}))
result = True
""")

    def joined():
        return run(follower, """
from pamportal.cluster.follower_selectors import join_current
j = join_current()
assert j.state != "failed", j.failure_reason
result = j.state == "joined"
""")

    wait_for(joined, timeout=150, interval=1, what=f"{address} to join")


def test_three_nodes_form_a_cluster(tmp_path):
    with SntpResponder() as sntp:
        ntp = sntp.address
        nodes = {address: cluster_node(tmp_path, address, ntp) for address in (LEADER, *FOLLOWERS)}
        try:
            for address, env in nodes.items():
                start(env, address)
            mek_text = finalise_leader(nodes[LEADER], LEADER, ntp)
            leader = nodes[LEADER]
            wait_for(lambda: run(leader, """
from pamportal.cluster.connections import etcd_client
ok, _ = etcd_client().health()
result = ok
"""), timeout=60, interval=1, what="the leader's etcd member")

            for index, address in enumerate(FOLLOWERS):
                join(leader, nodes[address], address, mek_text, tmp_path, code_offset=index)

            members = etcdctl_members(leader.data_dir, LEADER)
            assert len(members) == 3
            assert all(m.get("name") and m.get("clientURLs") for m in members), members  # all started
            assert not any(m.get("isLearner") for m in members), members  # all voting
            assert sorted(m["peerURLs"][0] for m in members) == [f"https://{a}:2380" for a in (LEADER, *FOLLOWERS)]

            assert_listeners_answer_only_their_own(leader.data_dir)

            page = run(leader, USERS + """
from django.test import Client
c = Client(HTTP_HOST="127.0.0.11")
c.force_login(user('admin', Role.ADMINISTRATOR), backend="django.contrib.auth.backends.ModelBackend")
s = c.session
from pamportal.accounts.models import TOTPDevice
s["otp_device_id"] = TOTPDevice.objects.get(user__username="admin").persistent_id
s.save()
r = c.get("/cluster/", secure=True)
result = [r.status_code, r.content.decode()]
""")
            assert page[0] == 200
            assert '<strong id="failure-tolerance">1</strong> failure right now' in page[1]
            for address in (LEADER, *FOLLOWERS):
                assert address in page[1]
        finally:
            for env in nodes.values():
                env.stop()
