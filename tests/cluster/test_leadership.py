""""Set cluster leader": a request names a healthy replica (refused with the reason
otherwise), approvers vote with a fresh TOTP code under the policy's M-of-N, and the
job asks Patroni for a switchover (a failover when the leader's Patroni is down), waits
for the candidate to lead and records the outcome. Automatic failover on and off. A
fake Patroni here; tests/replication/test_leadership_switchover.py runs real ones."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import pytest
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.cluster import database_view, leadership
from pamportal.cluster.models import Approval, ClusterMember, LeadershipRequest, MemberRole, MemberState, RequestState
from pamportal.cluster.policy import policy_update
from pamportal.cluster.refusals import ClusterRefused
from pamportal.cluster.requests import leadership_request_vote, requests_expire
from pamportal.jobs.models import Job
from pamportal.replication.database import DatabaseFile, DatabaseHost, write_database_file
from pamportal.replication.rest import ClusterMember as PatroniMember
from pamportal.replication.rest import ClusterView, PatroniRefused, PatroniUnavailable
from tests.cluster.conftest import LEADER, code_for, events, run_job

CANDIDATE = "127.0.0.112"
CANDIDATE_NAME = "node-127-0-0-112"
REPLICA = "127.0.0.113"
REPLICA_NAME = "node-127-0-0-113"
REASON = "planned maintenance of the leader's host"


def pmember(name, role, state, *, lag=None, host="127.0.0.111") -> PatroniMember:
    return PatroniMember(name=name, role=role, state=state, api_url=f"https://{host}:8008/patroni", host=host,
                         port=5432, timeline=3, lag=lag)


@dataclass
class FakePatroni:
    """Patroni's REST API of every member, as one object: /cluster, /patroni, the
    switchover and failover (which move the lead in ``view``), PATCH /config."""

    view: ClusterView
    down: set[str] = field(default_factory=set)  # api urls that do not answer
    refuse: str = ""  # the switchover/failover is refused with this text
    calls: list[tuple] = field(default_factory=list)
    url: str | None = None

    def at(self, api_url):
        return replace_url(self, api_url)

    def _check(self):
        if self.url in self.down:  # None: this node's own member
            raise PatroniUnavailable(self.url, "ConnectionRefusedError: [Errno 111] Connection refused")

    def cluster(self):
        self._check()
        return self.view

    def patroni(self):
        self._check()
        return {"state": "running"}

    def _promote(self, candidate):
        members = []
        for m in self.view.members:
            if m.name == candidate:
                members.append(replace(m, role="leader", state="running", lag=None))
            elif m.is_leader:
                members.append(replace(m, role="sync_standby", state="streaming", lag=0))
            else:
                members.append(m)
        self.view = ClusterView(members=tuple(members), paused=self.view.paused)

    def switchover(self, *, leader, candidate=None):
        self._check()
        self.calls.append(("switchover", leader, candidate, self.url))
        if self.refuse:
            raise PatroniRefused(f"{self.url}/switchover", 412, self.refuse)
        self._promote(candidate)
        return f'Successfully switched over to "{candidate}"'

    def failover(self, *, candidate):
        self._check()
        self.calls.append(("failover", candidate, self.url))
        if self.refuse:
            raise PatroniRefused(f"{self.url}/failover", 412, self.refuse)
        self._promote(candidate)
        return f"Successfully failed over to \"{candidate}\""

    def _call(self, method, path, body=None, *, timeout=None):
        self._check()
        self.calls.append((method, path, body))
        if path == "/config" and method == "PATCH":
            self.view = ClusterView(members=self.view.members, paused=bool(body.get("pause")))
            return 200, b"{}"
        raise AssertionError(path)

    api_url = "https://fake:8008"


class _At:
    """The fake as one member's API: the calls and the state are shared."""

    def __init__(self, fake, url):
        self._fake, self._url = fake, url
        self.api_url = url or "https://own:8008"

    def __getattr__(self, name):
        attr = getattr(self._fake, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self._fake.url = self._url
            try:
                return attr(*args, **kwargs)
            finally:
                self._fake.url = None

        return call


def replace_url(fake, url):
    return _At(fake, url)


def healthy_view(**overrides) -> ClusterView:
    members = {
        LEADER: pmember(LEADER, "leader", "running", host="127.0.0.111"),
        CANDIDATE_NAME: pmember(CANDIDATE_NAME, "sync_standby", "streaming", lag=1234, host=CANDIDATE),
        REPLICA_NAME: pmember(REPLICA_NAME, "replica", "streaming", lag=99, host=REPLICA),
    }
    members.update(overrides)
    return ClusterView(members=tuple(m for m in members.values() if m is not None))


@pytest.fixture
def patroni(monkeypatch, leader, data_dir, fake_etcd):
    """The leader's database is its Patroni member; two followers are replicas."""
    fake = FakePatroni(view=healthy_view())
    write_database_file(data_dir, DatabaseFile(hosts=(DatabaseHost(host="127.0.0.111", port=5432),), member=LEADER))
    monkeypatch.setattr(leadership, "patroni_client", lambda api_url=None, *, timeout=5.0: fake.at(
        None if api_url is None else leadership.api_base(api_url)))
    monkeypatch.setattr(database_view, "patroni_client", lambda *, timeout: fake.at(None))
    monkeypatch.setattr(leadership, "wait_seconds", lambda: 2.0)
    database_view.patroni_status_forget()
    for address, name in ((CANDIDATE, CANDIDATE_NAME), (REPLICA, REPLICA_NAME)):
        ClusterMember.objects.create(address=address, role=MemberRole.FOLLOWER, state=MemberState.ACTIVE,
                                     etcd_name=name)
    ClusterMember.objects.get_or_create(address=LEADER, defaults={
        "role": MemberRole.LEADER, "state": MemberState.ACTIVE, "etcd_name": LEADER})
    yield fake
    database_view.patroni_status_forget()


def member_pk(address) -> int:
    return ClusterMember.objects.get(address=address).pk


def ask(user, address=CANDIDATE, reason=REASON):
    return leadership.leadership_request_create(user=user, member_id=member_pk(address), reason=reason)


def vote(request, user, decision="approve", code=None):
    return leadership_request_vote(request_id=request.pk, user=user, decision=decision,
                                   totp_code=code if code is not None else code_for(user))


def refused(match, why, call, *args, **kwargs):
    before = LeadershipRequest.objects.count()
    with pytest.raises(ClusterRefused, match=match):
        call(*args, **kwargs)
    assert LeadershipRequest.objects.count() == before
    event = events(AuditAction.CLUSTER_LEADERSHIP_REFUSED)[-1]
    assert event.outcome == Outcome.DENIED and event.data["reason"] == why
    return event


# --- asking -------------------------------------------------------------------------------------
def test_a_request_names_the_sync_standby_and_records_the_lag(patroni, operator):
    request = ask(operator)
    assert request.state == RequestState.PENDING
    assert (request.candidate, request.leader_seen, request.lag_seen) == (CANDIDATE_NAME, LEADER, 1234)
    assert request.required_approvals == 2 and request.approver_role == Role.APPROVER
    [event] = events(AuditAction.CLUSTER_LEADERSHIP_REQUESTED)
    assert event.data["candidate"] == CANDIDATE_NAME and event.data["lag_bytes"] == 1234
    assert event.data["request_hash"] == request.request_hash
    assert event.target == f"leadership-request:{request.public_id}"


def test_bad_requests_are_refused_with_their_reasons(patroni, operator, make_user, approvers):
    viewer = make_user("viewer1", Role.VIEWER)
    refused("Only operators and administrators", "not allowed", ask, viewer)
    refused("Only operators and administrators", "not allowed", ask, approvers[0])
    refused("no such member", "no such member", leadership.leadership_request_create, user=operator,
            member_id=999999, reason=REASON)
    refused("already leads", "already the leader", ask, operator, LEADER)
    refused("at least 10 characters", "no reason", ask, operator, CANDIDATE, "because")
    refused("Only the synchronous standby", "not the sync standby", ask, operator, REPLICA)
    ClusterMember.objects.filter(address=REPLICA).update(state=MemberState.FAILED)
    refused("only an active member can lead", "member failed", ask, operator, REPLICA)
    # A member Patroni does not list, and a replica that is not streaming.
    outsider = ClusterMember.objects.create(address="127.0.0.114", state=MemberState.ACTIVE)
    refused("not a PostgreSQL member", "not a database member", leadership.leadership_request_create,
            user=operator, member_id=outsider.pk, reason=REASON)
    patroni.view = healthy_view(**{CANDIDATE_NAME: pmember(CANDIDATE_NAME, "replica", "stopped", host=CANDIDATE)})
    refused("only a streaming replica", "not a healthy replica", ask, operator)
    patroni.down.add(None)
    refused("Patroni cannot be asked", "patroni not reached", ask, operator)


def test_one_change_of_leader_at_a_time(patroni, operator):
    ask(operator)
    refused("already under way", "leadership change under way", ask, operator)


def test_a_node_not_on_patroni_has_no_leadership_to_move(patroni, operator, data_dir):
    (data_dir / "database.json").unlink()
    refused("not replicated", "database not replicated", ask, operator)


# --- voting ---------------------------------------------------------------------------------------
def test_m_of_n_fresh_totp_then_the_switchover(patroni, operator, approvers):
    request = ask(operator)
    code = code_for(approvers[0])
    vote(request, approvers[0], code=code)
    request.refresh_from_db()
    assert request.state == RequestState.PENDING and request.job is None  # 1 of 2: not enough
    # The same code again (a replay) is refused before the vote is even looked at.
    with pytest.raises(ClusterRefused, match="already used"):
        vote(request, approvers[0], code=code)
    with pytest.raises(ClusterRefused, match="role vote"):
        vote(request, operator)
    assert [e.data["reason"] for e in events(AuditAction.CLUSTER_VOTE_REFUSED)] == ["code already used",
                                                                                    "not an approver"]
    vote(request, approvers[1])
    request.refresh_from_db()
    assert request.state == RequestState.APPROVED and request.job.kind == "cluster.leadership"
    assert Approval.objects.filter(leadership_request=request).count() == 2
    assert not patroni.calls  # nothing moves before the job runs

    assert run_job(request.job_id) == "succeeded"
    request.refresh_from_db()
    assert request.state == RequestState.DONE and request.method == "switchover"
    assert request.previous_leader == LEADER and request.seconds is not None and request.seconds < 2
    assert [c[:3] for c in patroni.calls] == [("switchover", LEADER, CANDIDATE_NAME)]
    assert patroni.calls[0][3] == "https://127.0.0.111:8008"  # asked of the leader's own API
    [moved] = events(AuditAction.CLUSTER_LEADERSHIP_MOVED)
    assert moved.data["method"] == "switchover" and moved.data["previous_leader"] == LEADER
    assert moved.data["old_leader_follows"] is True  # the old leader streams from the new one
    assert ClusterMember.objects.get(address=CANDIDATE).role == MemberRole.LEADER
    assert ClusterMember.objects.get(address=LEADER).role == MemberRole.FOLLOWER
    # Run again (a task delivered twice): nothing moves a second time.
    assert Job.objects.filter(kind="cluster.leadership").count() == 1
    assert leadership.leadership_move(request_id=request.pk) == {"again": True}
    assert len(patroni.calls) == 1


def test_the_requester_cannot_approve_and_a_denial_is_final(patroni, leader, approvers):
    policy_update(user=leader["admin"], required_approvals=1, approver_role="administrator",
                  request_lifetime_hours=24)
    request = ask(leader["admin"])
    with pytest.raises(ClusterRefused, match="You made this request"):
        vote(request, leader["admin"])
    policy_update(user=leader["admin"], required_approvals=2, approver_role="approver", request_lifetime_hours=24)
    request = LeadershipRequest.objects.get(pk=request.pk)
    LeadershipRequest.objects.filter(pk=request.pk).update(state=RequestState.DENIED)
    other = ask(leader["admin"])
    vote(other, approvers[0], "deny")
    other.refresh_from_db()
    assert other.state == RequestState.DENIED and other.job is None
    with pytest.raises(ClusterRefused, match="votes are closed"):
        vote(other, approvers[1])
    assert events(AuditAction.CLUSTER_REQUEST_DENIED)


def test_a_changed_request_fails_at_execution(patroni, operator, approvers):
    request = ask(operator)
    vote(request, approvers[0])
    vote(request, approvers[1])
    LeadershipRequest.objects.filter(pk=request.pk).update(candidate=REPLICA_NAME)
    assert run_job(LeadershipRequest.objects.get(pk=request.pk).job_id) == "failed"
    request.refresh_from_db()
    assert request.state == RequestState.FAILED and "changed after the votes" in request.failure_reason
    assert not patroni.calls
    assert events(AuditAction.CLUSTER_LEADERSHIP_FAILED, Outcome.FAILED)


def test_requests_expire(patroni, operator):
    from datetime import timedelta

    from django.utils import timezone

    request = ask(operator)
    assert requests_expire(now=timezone.now() + timedelta(hours=25)) == 1
    request.refresh_from_db()
    assert request.state == RequestState.EXPIRED


# --- carrying it out --------------------------------------------------------------------------
def approved(operator, approvers) -> LeadershipRequest:
    request = ask(operator)
    vote(request, approvers[0])
    vote(request, approvers[1])
    return LeadershipRequest.objects.get(pk=request.pk)


def test_an_unreachable_leader_means_a_failover(patroni, operator, approvers):
    request = approved(operator, approvers)
    patroni.down.add("https://127.0.0.111:8008")
    assert run_job(request.job_id) == "succeeded"
    request.refresh_from_db()
    assert request.method == "failover" and request.state == RequestState.DONE
    assert patroni.calls[0][:2] == ("failover", CANDIDATE_NAME)
    assert patroni.calls[0][2] == f"https://{CANDIDATE}:8008"  # asked of the candidate's API
    assert events(AuditAction.CLUSTER_LEADERSHIP_MOVED)[-1].data["method"] == "failover"


def test_a_refused_switchover_fails_the_request_with_patronis_reason(patroni, operator, approvers):
    request = approved(operator, approvers)
    patroni.refuse = "candidate name does not match with sync_standby"
    assert run_job(request.job_id) == "failed"
    request.refresh_from_db()
    assert request.state == RequestState.FAILED and "sync_standby" in request.failure_reason
    [failed] = events(AuditAction.CLUSTER_LEADERSHIP_FAILED)
    assert failed.outcome == Outcome.FAILED and "sync_standby" in failed.data["reason"]
    assert ClusterMember.objects.get(address=LEADER).role == MemberRole.LEADER


def test_a_lead_that_does_not_move_in_time_fails(patroni, operator, approvers, monkeypatch):
    request = approved(operator, approvers)
    monkeypatch.setattr(FakePatroni, "_promote", lambda self, candidate: None)  # Patroni says yes, nothing moves
    assert run_job(request.job_id) == "failed"
    request.refresh_from_db()
    assert request.state == RequestState.FAILED and "did not lead within" in request.failure_reason


# --- automatic failover -------------------------------------------------------------------------
def test_failover_mode_is_for_administrators_and_audited(patroni, leader, operator):
    with pytest.raises(ClusterRefused, match="Only administrators"):
        leadership.failover_mode_set(user=operator, automatic=False)
    assert leadership.failover_mode_set(user=leader["admin"], automatic=False) is False
    assert ("PATCH", "/config", {"pause": True}) in patroni.calls and patroni.view.paused
    with pytest.raises(ClusterRefused, match="already off"):
        leadership.failover_mode_set(user=leader["admin"], automatic=False)
    leadership.failover_mode_set(user=leader["admin"], automatic=True)
    assert ("PATCH", "/config", {"pause": None}) in patroni.calls and not patroni.view.paused
    changed = events(AuditAction.CLUSTER_FAILOVER_MODE_CHANGED)
    assert [e.data["automatic"] for e in changed] == [False, True]
    assert changed[0].data["ttl_seconds"] == 20
    assert [e.data["reason"] for e in events(AuditAction.CLUSTER_FAILOVER_MODE_REFUSED)] == ["not allowed",
                                                                                             "no change"]


def test_a_failover_mode_patroni_refuses_leaves_no_change_event(patroni, leader, monkeypatch):
    def refuse(self, method, path, body=None, *, timeout=None):
        raise PatroniRefused("https://own:8008/config", 503, "no")

    monkeypatch.setattr(FakePatroni, "_call", refuse)
    with pytest.raises(ClusterRefused, match="did not change"):
        leadership.failover_mode_set(user=leader["admin"], automatic=False)
    assert not events(AuditAction.CLUSTER_FAILOVER_MODE_CHANGED)


# --- pages ----------------------------------------------------------------------------------------
def _row(page: str, address: str) -> str:
    return next(r for r in re.findall(r"<tr>.*?</tr>", page, re.S) if f"<td>{address}</td>" in r)


def test_the_cluster_page_offers_the_change_only_on_the_sync_standby(patroni, operator, login_client):
    client = login_client(operator)
    page = client.get(reverse("cluster:overview")).content.decode()
    assert "Automatic failover: <strong>on</strong>" in page and "after 20 s" in page
    assert reverse("cluster:leadership_request", args=[member_pk(CANDIDATE)]) in _row(page, CANDIDATE)
    assert "1234 bytes" in _row(page, CANDIDATE)  # what a failover may lose
    assert "Set cluster leader…</summary>" not in _row(page, REPLICA)
    assert "Set cluster leader…</summary>" not in _row(page, LEADER)


def test_request_vote_and_failover_mode_through_the_pages(patroni, leader, operator, approvers, make_user,
                                                           login_client, client):
    url = reverse("cluster:leadership_request", args=[member_pk(CANDIDATE)])
    viewer = make_user("viewer1", Role.VIEWER)
    login_client(viewer)
    assert client.post(url, {"reason": REASON}).status_code == 403
    assert client.post(reverse("cluster:failover_mode"), {"automatic": "off"}).status_code == 403
    login_client(operator)
    response = client.post(url, {"reason": REASON})
    assert response.status_code == 302 and response.url == reverse("cluster:leadership")
    request = LeadershipRequest.objects.get()
    page = client.get(reverse("cluster:leadership")).content.decode()
    assert f"Make {CANDIDATE} the cluster leader" in page and "1234 bytes (the lag last seen)" in page
    assert client.post(reverse("cluster:leadership_vote", args=[request.pk]),
                       {"decision": "approve", "totp_code": "000000"}).status_code == 403
    login_client(approvers[0])
    page = client.get(reverse("cluster:leadership")).content.decode()
    assert reverse("cluster:leadership_vote", args=[request.pk]) in page
    response = client.post(reverse("cluster:leadership_vote", args=[request.pk]),
                           {"decision": "approve", "totp_code": code_for(approvers[0])})
    assert response.status_code == 302
    assert Approval.objects.filter(leadership_request=request).count() == 1
    login_client(leader["admin"])
    assert client.post(reverse("cluster:failover_mode"), {"automatic": "off"}).status_code == 302
    assert patroni.view.paused
    database_view.patroni_status_forget()
    page = client.get(reverse("cluster:leadership")).content.decode()
    assert "off (manual only)" in page and "Switch automatic failover on" in page


def test_forms_need_the_csrf_token(patroni, operator, login_client):
    from django.test import Client

    csrf_client = Client(enforce_csrf_checks=True)
    login_client(operator, csrf_client)
    url = reverse("cluster:leadership_request", args=[member_pk(CANDIDATE)])
    assert csrf_client.post(url, {"reason": REASON}).status_code == 403
    assert not LeadershipRequest.objects.exists()


def test_a_node_on_sqlite_offers_no_leadership(leader, operator, login_client, client):
    login_client(operator)
    page = client.get(reverse("cluster:overview")).content.decode()
    assert "Automatic failover" not in page and "Set cluster leader…</summary>" not in page
    page = client.get(reverse("cluster:leadership")).content.decode()
    assert "not replicated" in page and "No change of leader requested yet." in page


def test_the_badge_counts_a_change_of_leader_and_the_requests_page_points_to_it(patroni, operator, approvers,
                                                                                 login_client, client):
    from pamportal.cluster.selectors import requests_awaiting_vote_count

    assert requests_awaiting_vote_count(approvers[0]) == 0
    ask(operator)
    assert requests_awaiting_vote_count(approvers[0]) == 1
    assert requests_awaiting_vote_count(operator) == 0  # the requester does not vote on their own
    login_client(approvers[0], client)
    page = client.get(reverse("cluster:requests")).content.decode()
    section = page[page.index('id="leadership-requests"'):]
    assert reverse("cluster:leadership") in section[:400] and "1 open" in section[:400]


def test_a_request_whose_job_died_unseen_is_failed_with_the_reason(patroni, operator, approvers):
    """The job's worker killed on its last attempt (the reaper fails the step and the job,
    but no step of the job runs to fail the request): the leader's housekeeping does,
    so the request does not stay "running" and block every later change of leader."""
    from pamportal.jobs.choices import Status
    from pamportal.jobs.models import Job

    request = approved(operator, approvers)
    LeadershipRequest.objects.filter(pk=request.pk).update(state=RequestState.RUNNING)
    assert leadership.leadership_reconcile() == 0  # its job still pending: nothing to do
    Job.objects.filter(pk=request.job_id).update(status=Status.FAILED)
    request.job.steps.update(status=Status.FAILED, error="worker w1 stopped renewing its lease")
    assert leadership.leadership_reconcile() == 1
    request.refresh_from_db()
    assert request.state == RequestState.FAILED
    assert request.failure_reason == "its job failed: worker w1 stopped renewing its lease"
    [failed] = events(AuditAction.CLUSTER_LEADERSHIP_FAILED)
    assert failed.data["reason"] == request.failure_reason
    assert leadership.leadership_reconcile() == 0  # once
    assert not leadership.leadership_under_way()  # a new change of leader may be asked for
