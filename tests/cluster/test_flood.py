"""Nobody can grow the audit trail without limit: anonymous junk sent to the setup API
(2390), and logins during a lockout, are recorded one by one only up to
PAM_AUDIT_REPEAT_LIMIT per source address, kind and PAM_AUDIT_REPEAT_WINDOW; the rest
are counted and the count reaches the trail in one summary event per window. Nothing
is lost (recorded + counted = sent), the chain verifies, and a genuine follower on
another address is answered and recorded as usual during the flood."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone

from pamportal.accounts.roles import Role
from pamportal.audit import conf as audit_conf
from pamportal.audit.actions import AuditAction
from pamportal.audit.models import AuditEvent, AuditRepeatCounter
from pamportal.audit.repeats import audit_repeats_flush, window_start
from pamportal.audit.selectors import audit_chain_verify
from pamportal.cluster.models import JoinRequest
from tests.cluster.conftest import follower_request, generate_bundle

ATTACKER = "203.0.113.9"
FLOOD = 2000
JUNK = [b"not json", b"[]", b'{"bundle_id":"\\ud800"}', b"[" * 50 + b"]" * 50]


def _windows(start, end) -> int:
    seconds = audit_conf.repeat_window()
    return int((window_start(end, seconds) - window_start(start, seconds)).total_seconds()) // seconds + 1


def _counted(source: str) -> int:
    return sum(json.loads(e.details)["counted"] for e in AuditEvent.objects.filter(
        action=AuditAction.AUDIT_REPEATS_COUNTED) if json.loads(e.details)["source_ip"] == source)


def test_a_flood_of_junk_join_requests_adds_a_bounded_number_of_events(leader, operator, client):
    limit, seconds = audit_conf.repeat_limit(), audit_conf.repeat_window()
    assert (limit, seconds) == (10, 60)  # the defaults
    bundle = generate_bundle(operator)
    genuine = follower_request(bytes(bundle.file), leader["mek"])
    before = AuditEvent.objects.count()
    started = timezone.now()
    kinds = set()
    genuine_events = 0
    for i in range(FLOOD):
        response = client.post("/api/setup/v1/join", data=JUNK[i % len(JUNK)], content_type="application/json",
                               REMOTE_ADDR=ATTACKER)
        assert response.status_code == 400
        kinds.add(response.json()["error"]["code"])
        if i == FLOOD // 2:
            # Meanwhile a follower on another address: its join and its refusals are
            # answered and recorded exactly as without the flood.
            mark = AuditEvent.objects.count()
            answer = client.post("/api/setup/v1/join", data=json.dumps(genuine), content_type="application/json",
                                 REMOTE_ADDR="198.51.100.7")
            assert answer.status_code == 201, answer.content
            assert JoinRequest.objects.filter(public_id=answer.json()["request_id"]).exists()
            refused = client.post("/api/setup/v1/join", data=b"[]", content_type="application/json",
                                  REMOTE_ADDR="198.51.100.8")
            assert refused.status_code == 400
            new = list(AuditEvent.objects.filter(position__gt=mark).order_by("position"))
            assert [e.action for e in new] == [AuditAction.CLUSTER_BUNDLE_USED, AuditAction.CLUSTER_JOIN_REQUESTED,
                                               AuditAction.CLUSTER_JOIN_REFUSED]
            assert new[1].source_ip == "198.51.100.7" and new[2].source_ip == "198.51.100.8"
            genuine_events = len(new)
    finished = timezone.now()
    # The periodic flush after the last window is over writes what is still counted.
    audit_repeats_flush(now=finished + timedelta(seconds=seconds))
    assert not AuditRepeatCounter.objects.filter(source=ATTACKER).exists()

    flood_events = AuditEvent.objects.count() - before - genuine_events
    windows = _windows(started, finished)
    # Per kind and window: at most `limit` refusals one by one and one summary.
    bound = len(kinds) * windows * (limit + 1)
    assert flood_events <= bound, (flood_events, bound)
    assert flood_events < FLOOD // 10
    # Lossless: every junk request is either an event of its own or in a count.
    recorded = AuditEvent.objects.filter(action=AuditAction.CLUSTER_JOIN_REFUSED, source_ip=ATTACKER).count()
    assert recorded + _counted(ATTACKER) == FLOOD
    result = audit_chain_verify()
    assert result.ok, result.reason


def test_the_count_of_a_window_is_written_by_the_next_refusal_in_a_later_window(leader, client, monkeypatch):
    limit, seconds = audit_conf.repeat_limit(), audit_conf.repeat_window()
    moment = timezone.now()
    monkeypatch.setattr("pamportal.audit.repeats.timezone.now", lambda: moment)
    for _ in range(limit + 5):
        client.post("/api/setup/v1/join", data=b"[]", content_type="application/json", REMOTE_ADDR=ATTACKER)
    assert AuditEvent.objects.filter(action=AuditAction.CLUSTER_JOIN_REFUSED, source_ip=ATTACKER).count() == limit
    assert not AuditEvent.objects.filter(action=AuditAction.AUDIT_REPEATS_COUNTED).exists()
    moment = moment + timedelta(seconds=seconds)
    client.post("/api/setup/v1/join", data=b"[]", content_type="application/json", REMOTE_ADDR=ATTACKER)
    (summary,) = AuditEvent.objects.filter(action=AuditAction.AUDIT_REPEATS_COUNTED)
    data = json.loads(summary.details)
    assert data["counted"] == 5 and data["recorded"] == limit and data["source_ip"] == ATTACKER
    assert data["kind"] == "cluster.join_refused:bad_request"
    assert AuditEvent.objects.filter(action=AuditAction.CLUSTER_JOIN_REFUSED, source_ip=ATTACKER).count() == limit + 1


@pytest.mark.django_db
def test_logins_during_a_lockout_are_bounded_and_counted(admin_user, make_user, settings):
    make_user("vera", Role.VIEWER)
    limit, seconds = audit_conf.repeat_limit(), audit_conf.repeat_window()
    client = Client(REMOTE_ADDR=ATTACKER)
    started = timezone.now()
    attempts = django_settings.AXES_FAILURE_LIMIT + 60
    for attempt in range(attempts):
        client.post("/account/login/", {"username": "vera", "password": f"wrong {attempt}", "otp_token": ""})
    finished = timezone.now()
    audit_repeats_flush(now=finished + timedelta(seconds=seconds))
    locked = AuditEvent.objects.filter(action=AuditAction.LOGIN_LOCKED_OUT).count()
    refused_during_lockout = attempts - django_settings.AXES_FAILURE_LIMIT + 1  # the one that locked is refused too
    assert locked <= _windows(started, finished) * limit
    assert locked + _counted(ATTACKER) == refused_during_lockout
    assert AuditEvent.objects.filter(action=AuditAction.AUDIT_REPEATS_COUNTED).count() <= _windows(started, finished)
    assert audit_chain_verify().ok
