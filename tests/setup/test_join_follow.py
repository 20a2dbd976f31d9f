"""The follower's follow step, one bounded round at a time: it asks the leader, stops
at once when its worker loses the lease, hands over to a new follow job when its round
ends, and gives up (failing the join) after PAM_JOIN_FOLLOW_SECONDS in all."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from pamportal.audit.actions import AuditAction
from pamportal.cluster import follower
from pamportal.cluster.follower_models import FollowerJoin, JoinState
from pamportal.crypto import mek
from pamportal.jobs.engine import StepContext
from pamportal.jobs.models import Job
from pamportal.jobs.services import job_create
from pamportal.nodes import keystore
from tests.accounts.helpers import events

pytestmark = pytest.mark.django_db


@pytest.fixture
def requested(monkeypatch):
    """A join waiting on the leader, its follow job created (not queued)."""
    keystore.mek_install(mek.generate())
    monkeypatch.setattr(follower, "POLL_INTERVAL", 0.0)
    join = FollowerJoin.objects.create(
        created_by="admin", state=JoinState.REQUESTED, own_address="127.0.0.12", leader_address="127.0.0.11",
        leader_ports={"setup_api": 2390}, leader_version="1.0", cluster_id="c", bundle_id="b",
        bundle_expires=timezone.now() + timedelta(hours=1), ca_cert_pem="", mek_fingerprint="f",
        sealed_join_token="", request_id="r1",
        sealed_poll_secret=keystore.seal(purpose="join-poll-secret", data=b"secret"),
    )
    job = job_create(kind=follower.FOLLOW_KIND, params={"join_id": join.pk}, enqueue=False)
    join.job = job
    join.save()
    return join


def _ctx(job: Job) -> StepContext:
    return StepContext(job=job, step=job.steps.get(), worker_id="test")


def _leader(monkeypatch, answers: list):
    calls = []

    def fake_call(join, path, *, bearer="", **kwargs):
        calls.append((path, bearer))
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return 200, answer

    monkeypatch.setattr(follower, "leader_call", fake_call)
    return calls


def test_joined_finishes_the_join(requested, monkeypatch):
    requested.state = JoinState.JOINING
    requested.save()
    calls = _leader(monkeypatch, [OSError("refused"), {"ok": True, "state": "pending", "approvals": 1},
                                  {"ok": True, "state": "joined", "approvals": 2}])
    result = follower.join_follow(_ctx(requested.job))
    assert result == {"state": "joined", "leader": "127.0.0.11"}
    assert len(calls) == 3 and calls[0] == ("/api/setup/v1/join/r1", "secret")
    requested.refresh_from_db()
    assert requested.state == JoinState.JOINED
    assert len(events(AuditAction.JOIN_COMPLETED)) == 1


def test_a_round_hands_over_to_a_new_follow_job(requested, monkeypatch, settings):
    settings.PAM_JOIN_FOLLOW_SECONDS = 3600
    monkeypatch.setattr(follower, "FOLLOW_ROUND_SECONDS", 0.0)
    calls = _leader(monkeypatch, [{"ok": True, "state": "pending"}])
    first = requested.job
    result = follower.join_follow(_ctx(first))
    requested.refresh_from_db()
    assert calls == [] and result["state"] == "waiting" and result["round"] == 2
    assert requested.job_id == result["next_job"] != first.pk
    following = requested.job
    assert following.kind == follower.FOLLOW_KIND and following.params["join_id"] == requested.pk
    # The deadline is the first round's: carried, not restarted.
    until = following.params["follow_until"]
    assert until == (first.created_at + timedelta(seconds=3600)).isoformat()
    # An older round (its job no longer the join's) does not hand over again.
    assert follower.join_follow(_ctx(first)) == {"state": "superseded"}
    assert Job.objects.filter(kind=follower.FOLLOW_KIND).count() == 2


def test_a_lost_lease_stops_the_round_at_once(requested, monkeypatch):
    calls = _leader(monkeypatch, [{"ok": True, "state": "pending"}])
    ctx = _ctx(requested.job)
    ctx.lease_lost.set()
    assert follower.join_follow(ctx) == {"state": "lease lost"}
    assert calls == []
    requested.refresh_from_db()
    assert requested.state == JoinState.REQUESTED and requested.job_id == ctx.job.pk


def test_the_follow_gives_up_after_join_follow_seconds(requested, monkeypatch, settings):
    settings.PAM_JOIN_FOLLOW_SECONDS = 0
    _leader(monkeypatch, [{"ok": True, "state": "pending"}])
    with pytest.raises(RuntimeError, match="did not finish in time"):
        follower.join_follow(_ctx(requested.job))
    requested.refresh_from_db()
    assert requested.state == JoinState.FAILED and requested.failure_reason == "the join request did not finish in time"


def test_a_denied_request_fails_the_join(requested, monkeypatch):
    _leader(monkeypatch, [{"ok": True, "state": "denied", "failure_reason": "denied by two approvers"}])
    with pytest.raises(RuntimeError, match="denied by two approvers"):
        follower.join_follow(_ctx(requested.job))
    requested.refresh_from_db()
    assert requested.state == JoinState.FAILED


@pytest.mark.parametrize("replicated", [True, False])
def test_a_joined_replica_keeps_polling_until_its_console_moves(requested, make_user, login_client, replicated):
    """Joined a replicated cluster: the page says the console moves onto the cluster's
    database and keeps polling (its next poll, anonymous there, goes to the login page);
    joined a cluster on SQLite: done, polling stops."""
    from pamportal.accounts.roles import Role

    FollowerJoin.objects.filter(pk=requested.pk).update(state=JoinState.JOINED, cluster_replicated=replicated)
    client = login_client(make_user("follower-admin", Role.ADMINISTRATOR))
    polled = client.get("/setup/join/status/", HTTP_HX_REQUEST="true")
    page = polled.content.decode()
    if replicated:
        assert polled.status_code == 200 and 'hx-trigger="every 2s"' in page and 'id="join-moving"' in page
        assert "log in again, with an account of the cluster" in page
    else:
        assert polled.status_code == 286 and 'hx-trigger' not in page and 'id="join-moving"' not in page
        assert "This node is a voting member of the cluster." in page
