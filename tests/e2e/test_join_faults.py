"""Faults during a join, with real nodes on 127.0.0.41, .42 and .43:

1. The leader's worker is SIGKILLed while the join job waits in its "promote" step.
   After a new worker starts, the node is either an active voting member exactly
   once (one etcd member for it, promoted, no second learner) or the join was undone
   cleanly (no learner left, certificate revoked, request failed with the reason);
   either outcome is in the leader's audit trail.
2. A follower whose etcd member never starts (no etcd binary on its PATH): the
   leader's join job fails after PAM_JOIN_WAIT_SECONDS, the learner is removed, the
   request fails with the reason, and the follower's page shows it.

The leader of test 1 runs `serve` without its worker (PAM_SERVE_WITHOUT_WORKER=1:
serve stops the node when its own worker dies) and a worker started by the test.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.preflight.support import SntpResponder
from tests.support.cluster import USERS, cluster_node, etcdctl_members, finalise_leader, run, start
from tests.support.node import NodeEnv, https_get, wait_for

pytestmark = [pytest.mark.processes, pytest.mark.cluster, pytest.mark.timeout(600)]

LEADER, FOLLOWER_KILL, FOLLOWER_NO_ETCD = "127.0.0.41", "127.0.0.42", "127.0.0.43"
REPO = Path(__file__).resolve().parents[2]


# --- helpers ------------------------------------------------------------------------------
def peer_urls(members: list[dict]) -> list[str]:
    return sorted(url for m in members for url in m.get("peerURLs", []))


def prepare(env: NodeEnv, address: str) -> None:
    """What ``start_node`` does before it spawns ``serve``: env, database, certificate."""
    env.env.update(PAM_BIND_ADDRESS=address, PAM_HTTPS_PORT="8443", PAM_NODE_ADDRESS=address)
    env.manage("migrate", "--noinput")
    env.manage("tls_ensure")
    run(env, USERS + "user('admin', Role.ADMINISTRATOR)\nresult = True")


def serve(env: NodeEnv, address: str):
    proc = env.spawn([sys.executable, str(REPO / "manage.py"), "serve", "--workers", "1", "--concurrency", "1"],
                     "serve")

    def answers():
        try:
            return https_get(f"https://{address}:8443/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    wait_for(answers, timeout=60, what=f"the console at {address}")
    return proc


def leader_etcd_healthy(leader: NodeEnv) -> None:
    wait_for(lambda: run(leader, """
from pamportal.cluster.connections import etcd_client
ok, _ = etcd_client().health()
result = ok
"""), timeout=60, interval=1, what="the leader's etcd member")


def request_join(leader: NodeEnv, follower: NodeEnv, address: str, mek_text: str, tmp_path) -> int:
    """Bundle on the leader, open + check + request on the follower, two approvals.
    Returns the leader's join request pk (its job is then under way)."""
    bundle = run(leader, USERS + f"""
from pamportal.cluster import bundles as cs
result = str(cs.bundle_generate(user=user('operator', Role.OPERATOR), follower_address={address!r}).bundle_id)
""")
    data = wait_for(lambda: run(leader, USERS + f"""
import base64
from pamportal.cluster import bundles as cs
from pamportal.cluster.models import JoiningBundle
b = JoiningBundle.objects.get(bundle_id={bundle!r})
result = base64.b64encode(cs.bundle_download(user=user('operator', Role.OPERATOR), bundle_id=b.bundle_id).data).decode() if b.file else None
"""), timeout=30, what="the bundle job")
    path = tmp_path / f"{address}.bundle"
    path.write_bytes(__import__("base64").b64decode(data))
    assert run(follower, USERS + f"""
from pathlib import Path
from pamportal.cluster import follower as j
admin = user('admin', Role.ADMINISTRATOR)
j.join_bundle_open(user=admin, data=Path({str(path)!r}).read_bytes(), mek_text={mek_text!r}, own_address={address!r})
checked = j.join_preflight(user=admin)
assert checked.state == "checked", checked.preflight
result = j.join_request_send(user=admin).request_id
""")
    request_pk = run(leader, f"""
from pamportal.cluster.models import JoinRequest
result = JoinRequest.objects.get(follower_address={address!r}, state="pending").pk
""")
    for approver in ("approver-1", "approver-2"):
        run(leader, USERS + f"""
from pamportal.cluster import requests as cs
a = user({approver!r}, Role.APPROVER)
cs.join_request_vote(request_id={request_pk}, user=a, decision="approve", totp_code=code(a))
result = True
""")
    return request_pk


def leader_request(leader: NodeEnv, request_pk: int) -> dict:
    """The request, its job's steps and the audit events about it and its job."""
    return run(leader, f"""
import json
from pamportal.audit.models import AuditEvent
from pamportal.cluster.models import JoinRequest, RevokedCertificate
r = JoinRequest.objects.select_related("job").get(pk={request_pk})
steps = {{s.name: {{"status": s.status, "attempts": s.attempts, "error": s.error}}
          for s in r.job.steps.all()}} if r.job else {{}}
events = [{{"action": e.action, "outcome": e.outcome, "target": e.target, "details": json.loads(e.details)}}
          for e in AuditEvent.objects.filter(target__in=[f"join-request:{{r.public_id}}", f"job:{{r.job_id}}",
                                                         f"certificate-serial:{{r.cert_serial}}"]).order_by("position")]
result = {{"state": r.state, "failure_reason": r.failure_reason, "job_status": r.job.status if r.job else None,
           "steps": steps, "member_id": r.etcd_member_id, "cert_serial": r.cert_serial,
           "revoked": RevokedCertificate.objects.filter(serial=r.cert_serial).exists() if r.cert_serial else False,
           "events": events}}
""")


def follower_join(follower: NodeEnv) -> dict:
    return run(follower, """
from pamportal.cluster.follower_selectors import join_current
j = join_current()
result = {"state": j.state, "failure_reason": j.failure_reason}
""")


def actions(events: list[dict]) -> list[str]:
    return [e["action"] for e in events]


def stop_all(nodes) -> None:
    for env in nodes:
        try:
            env.stop()
        except Exception:  # one node's cleanup must not leave the others running
            pass


JOB_ENDED = ("succeeded", "failed", "cancelled")


# --- 1. the leader's worker killed in the middle of the join ------------------------------------
def test_leader_worker_killed_during_join(tmp_path):
    timings: dict[str, float] = {}
    began = time.monotonic()
    with SntpResponder() as sntp:
        ntp = sntp.address
        leader = cluster_node(tmp_path, LEADER, ntp)
        leader.env.update(PAM_SERVE_WITHOUT_WORKER="1", PAM_JOB_LEASE_SECONDS="5", PAM_JOB_REAPER_INTERVAL="1")
        follower = cluster_node(tmp_path, FOLLOWER_KILL, ntp)
        follower.env.update(PAM_JOB_LEASE_SECONDS="5", PAM_JOB_REAPER_INTERVAL="1")
        try:
            start(leader, LEADER)
            worker = leader.start_worker(beat=True)
            mek_text = finalise_leader(leader, LEADER, ntp)
            leader_etcd_healthy(leader)
            # The follower's node is set up but not running: its worker (which applies
            # the handover) and its etcd member start only after the kill, so the
            # leader's job is certain to be waiting in "promote" when it is killed.
            prepare(follower, FOLLOWER_KILL)
            request_pk = request_join(leader, follower, FOLLOWER_KILL, mek_text, tmp_path)
            timings["approved"] = time.monotonic() - began

            def promoting():
                steps = leader_request(leader, request_pk)["steps"]
                return steps.get("promote", {}).get("status") == "running"

            wait_for(promoting, timeout=60, interval=0.5, what="the join job's promote step to run")
            leader.kill(worker)  # SIGKILL to the worker's process group, pool included
            assert worker.returncode is not None
            killed = leader_request(leader, request_pk)
            assert killed["state"] == "joining", killed
            assert killed["steps"]["promote"]["status"] == "running", killed["steps"]  # nobody renews it now
            learners_before = [m for m in etcdctl_members(leader.data_dir, LEADER)
                               if f"https://{FOLLOWER_KILL}:2380" in m.get("peerURLs", [])]
            assert len(learners_before) == 1 and learners_before[0].get("isLearner"), learners_before
            timings["killed"] = time.monotonic() - began

            leader.start_worker(beat=True, name="worker-2")
            serve(follower, FOLLOWER_KILL)

            def settled():
                # The request's state is written by the last step; the job's status
                # after it, in its own transaction: the join has ended when both have.
                r = leader_request(leader, request_pk)
                return r if r["state"] in ("joined", "failed") and r["job_status"] in JOB_ENDED else None

            # The reaper re-queues "promote" once the lease expires; should the attempt
            # fail, housekeeping (every 60 s) undoes the join: allow for both.
            outcome = wait_for(settled, timeout=200, interval=1, what="the join to end one way or the other")
            timings["settled"] = time.monotonic() - began
            events = outcome["events"]
            lease_expired = [e for e in events if e["action"] == "job.lease_expired"]
            assert lease_expired and lease_expired[0]["details"]["step"] == "promote", events
            assert lease_expired[0]["details"]["then"] == "re-queued", lease_expired
            # Whatever the outcome: one certificate, one learner ever added.
            assert actions(events).count("cluster.join_cert_issued") == 1, events
            assert actions(events).count("cluster.join_learner_added") == 1, events
            members = etcdctl_members(leader.data_dir, LEADER)
            ours = [m for m in members if f"https://{FOLLOWER_KILL}:2380" in m.get("peerURLs", [])]

            # Both endings are correct; each has its own invariants, checked below.
            assert outcome["state"] in ("joined", "failed"), outcome
            if outcome["state"] == "joined":
                print("outcome: joined exactly once")
                assert len(members) == 2, members
                assert peer_urls(members) == [f"https://{a}:2380" for a in (LEADER, FOLLOWER_KILL)], members
                assert len(ours) == 1 and not ours[0].get("isLearner"), members
                assert str(int(ours[0]["ID"])) == outcome["member_id"], (ours, outcome["member_id"])
                assert ours[0].get("name") and ours[0].get("clientURLs"), ours  # started
                assert outcome["job_status"] == "succeeded", outcome
                promote = outcome["steps"]["promote"]
                assert (promote["status"], promote["attempts"]) == ("succeeded", 2), promote  # the re-run
                assert actions(events).count("cluster.joined") == 1, events
                assert "cluster.join_failed" not in actions(events), events
                assert not outcome["revoked"], outcome
                wait_for(lambda: follower_join(follower)["state"] == "joined", timeout=60, interval=1,
                         what="the follower to see that it joined")
                joined = run(follower, """
from pamportal.audit.models import AuditEvent
result = list(AuditEvent.objects.filter(action="join.completed").values_list("target", flat=True))
""")
                assert joined == [f"node:{FOLLOWER_KILL}"], joined
            else:
                print("outcome: join undone")
                assert outcome["failure_reason"], outcome
                assert ours == [], members  # no learner left for the follower
                assert peer_urls(members) == [f"https://{LEADER}:2380"], members
                assert outcome["revoked"], outcome
                assert "cluster.join_failed" in actions(events), events
                assert "cluster.joined" not in actions(events), events
                failed = wait_for(lambda: (lambda j: j if j["state"] == "failed" else None)(follower_join(follower)),
                                  timeout=60, interval=1, what="the follower to see the failure")
                assert failed["failure_reason"] == outcome["failure_reason"], failed
        finally:
            stop_all((follower, leader))
    print("timings (s from start):", {k: round(v, 1) for k, v in timings.items()})


# --- 2. a follower that never starts its member ------------------------------------------------
def test_follower_member_never_starts(tmp_path):
    began = time.monotonic()
    with SntpResponder() as sntp:
        ntp = sntp.address
        leader = cluster_node(tmp_path, LEADER, ntp)
        leader.env.update(PAM_JOIN_WAIT_SECONDS="15")
        follower = cluster_node(tmp_path, FOLLOWER_NO_ETCD, ntp)
        # A PATH without etcd: serve never starts the follower's member.
        empty = tmp_path / "no-etcd-bin"
        empty.mkdir()
        follower.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(empty)])
        try:
            start(leader, LEADER)
            mek_text = finalise_leader(leader, LEADER, ntp)
            leader_etcd_healthy(leader)
            start(follower, FOLLOWER_NO_ETCD)
            assert run(follower, """
from pamportal.cluster.local_etcd import etcd_available
result = etcd_available()
""") is False
            request_pk = request_join(leader, follower, FOLLOWER_NO_ETCD, mek_text, tmp_path)
            approved = time.monotonic()

            # While the job waits, the learner is in etcd, never started.
            def learner_added():
                members = etcdctl_members(leader.data_dir, LEADER)
                return [m for m in members if f"https://{FOLLOWER_NO_ETCD}:2380" in m.get("peerURLs", [])]

            learner = wait_for(learner_added, timeout=30, interval=0.5, what="the learner to be added")
            assert learner[0].get("isLearner") and not learner[0].get("clientURLs"), learner

            outcome = wait_for(lambda: (lambda r: r if r["state"] == "failed" and r["job_status"] in JOB_ENDED else None)(
                leader_request(leader, request_pk)), timeout=90, interval=1, what="the join request to fail")
            failed_after = time.monotonic() - approved
            assert "did not start within 15 s" in outcome["failure_reason"], outcome
            assert outcome["job_status"] == "failed", outcome
            assert outcome["steps"]["promote"]["status"] == "failed", outcome["steps"]
            assert "did not start within 15 s" in outcome["steps"]["promote"]["error"], outcome["steps"]
            assert outcome["steps"]["activate"]["status"] == "skipped", outcome["steps"]
            assert outcome["revoked"], outcome

            members = etcdctl_members(leader.data_dir, LEADER)
            assert peer_urls(members) == [f"https://{LEADER}:2380"], members  # the learner is gone
            assert not any(m.get("isLearner") for m in members), members

            events = outcome["events"]
            join_failed = [e for e in events if e["action"] == "cluster.join_failed"]
            assert len(join_failed) == 1, events
            assert join_failed[0]["outcome"] == "failed"
            assert join_failed[0]["details"]["learner_removed"] is True, join_failed
            assert join_failed[0]["details"]["certificate_revoked"] is True, join_failed
            assert "did not start within 15 s" in join_failed[0]["details"]["reason"], join_failed
            assert "cluster.cert_revoked" in actions(events), events
            assert "cluster.joined" not in actions(events), events
            member_state = run(leader, f"""
from pamportal.cluster.models import ClusterMember
result = ClusterMember.objects.get(address={FOLLOWER_NO_ETCD!r}).state
""")
            assert member_state == "failed", member_state

            # The follower: failed with the leader's reason, on its page too.
            failed = wait_for(lambda: (lambda j: j if j["state"] == "failed" else None)(follower_join(follower)),
                              timeout=30, interval=1, what="the follower to see the failure")
            assert failed["failure_reason"] == outcome["failure_reason"], failed
            page = run(follower, USERS + f"""
from django.test import Client
from pamportal.accounts.models import TOTPDevice
from pamportal.audit.models import AuditEvent
c = Client(HTTP_HOST={FOLLOWER_NO_ETCD!r})
c.force_login(user('admin', Role.ADMINISTRATOR), backend="django.contrib.auth.backends.ModelBackend")
s = c.session
s["otp_device_id"] = TOTPDevice.objects.get(user__username="admin").persistent_id
s.save()
r = c.get("/setup/join/status/", secure=True)
result = [r.status_code, r.content.decode(),
          list(AuditEvent.objects.filter(action="join.failed").values_list("details", flat=True))]
""")
            assert page[0] == 200, page[0]
            assert 'data-join-state="failed"' in page[1]
            assert "The join failed:" in page[1] and "did not start within 15 s" in page[1]
            assert len(page[2]) == 1 and "did not start within 15 s" in json.loads(page[2][0])["reason"], page[2]
            # The failed join leaves no member configuration behind on the follower.
            assert not (follower.data_dir / "etcd" / "member.json").exists()
            print(f"join failed {failed_after:.1f} s after the last approval; test took "
                  f"{time.monotonic() - began:.1f} s")
        finally:
            stop_all((follower, leader))
