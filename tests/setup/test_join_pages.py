"""Joining a cluster from the follower's first boot: every broken bundle, a wrong or
mistyped MEK and a bundle for another address are refused on the page with their own
message, an audit event, and no change (no MEK installed, no join recorded)."""

from __future__ import annotations

import html
import socket

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction
from pamportal.audit.models import AuditEvent
from pamportal.cluster.follower import _port_free
from pamportal.cluster.follower_models import FollowerJoin, JoinState
from pamportal.crypto import mek
from pamportal.nodes import keystore
from tests.crypto.bundle_corpus import CORPUS, FOLLOWER, GOOD, MEK, NOW, OTHER_MEK, TOKEN


@pytest.fixture
def follower(make_user, login_client, settings, tmp_path, monkeypatch):
    settings.PAM_DATA_DIR = tmp_path
    # The corpus is made for a fixed moment; the follower's clock reads it.
    monkeypatch.setattr("pamportal.cluster.follower.timezone.now", lambda: NOW)
    return login_client(make_user("follower-admin", Role.ADMINISTRATOR))


def post(client, data: bytes, *, mek_text: str | None = None, address: str = FOLLOWER):
    return client.post(
        reverse("setup:join"),
        {"bundle": SimpleUploadedFile("join.bundle", data), "mek": mek_text if mek_text is not None else mek.encode(MEK),
         "own_address": address},
        secure=True,
    )


def refusals() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=AuditAction.JOIN_REFUSED_LOCALLY))


def assert_nothing_changed():
    assert not FollowerJoin.objects.exists()
    assert not keystore.mek_exists()


# The page asks for this node's address; cases about the address are tested below. An
# empty upload is refused by the form before the parser sees it; an oversized one below.
PAGE_CASES = [
    case for case in CORPUS
    if case.mek == MEK and case.own_address in (None, FOLLOWER) and case.now == NOW
    and case.code not in ("empty", "too_large")
]


def test_the_corpus_is_large():
    assert len(PAGE_CASES) >= 50


@pytest.mark.parametrize("case", PAGE_CASES, ids=[case.name for case in PAGE_CASES])
def test_each_broken_bundle_is_refused_with_its_message(follower, case):
    response = post(follower, case.data)
    assert response.status_code == 400
    assert html.escape(case.message) in response.content.decode()
    events = refusals()
    assert len(events) == 1 and f'"code":"{case.code}"' in events[0].details
    assert_nothing_changed()


def test_wrong_mek(follower):
    response = post(follower, GOOD, mek_text=mek.encode(OTHER_MEK))
    assert response.status_code == 400
    assert "wrong MEK" in response.content.decode()
    assert len(refusals()) == 1
    assert_nothing_changed()


def test_mistyped_mek_caught_by_the_checksum(follower):
    text = mek.encode(MEK)
    typo = text[:5] + ("A" if text[5] != "A" else "B") + text[6:]
    response = post(follower, GOOD, mek_text=typo)
    assert response.status_code == 400
    assert "mistyped" in response.content.decode()
    assert len(refusals()) == 1
    assert_nothing_changed()


def test_bundle_for_another_address(follower):
    response = post(follower, GOOD, address="10.0.0.8")
    assert response.status_code == 400
    assert "not for this node (10.0.0.8)" in response.content.decode()
    assert_nothing_changed()


def test_too_large_file_refused_with_an_audit_event(follower):
    response = post(follower, b"{" * (4 * 64 * 1024))
    assert response.status_code == 400
    assert "The file is too large to be a joining bundle (the limit is 64 KiB)." in response.content.decode()
    events = refusals()
    assert len(events) == 1 and '"code":"too_large"' in events[0].details
    assert_nothing_changed()


def test_empty_file_refused(follower):
    response = post(follower, b"")
    assert response.status_code == 400
    assert "The submitted file is empty." in response.content.decode()
    assert_nothing_changed()


def test_good_bundle_opens_installs_the_mek_and_keeps_no_secret_in_clear(follower):
    response = post(follower, GOOD)
    assert response.status_code == 302 and response.url == reverse("setup:join_status")
    join = FollowerJoin.objects.get()
    assert join.state == JoinState.OPENED and join.own_address == FOLLOWER
    assert keystore.mek_load() == MEK
    assert TOKEN not in join.sealed_join_token  # sealed under the MEK
    assert AuditEvent.objects.filter(action=AuditAction.JOIN_BUNDLE_OPENED).count() == 1
    page = follower.get(reverse("setup:join_status"), secure=True)
    assert page.status_code == 200 and "Check the way to the leader" in page.content.decode()


def test_viewer_cannot_join(make_user, login_client, admin_user, client):
    login_client(make_user("just-a-viewer", Role.VIEWER))
    assert post(client, GOOD).status_code == 403
    assert not FollowerJoin.objects.exists()


def test_own_port_check_tells_a_listener_from_time_wait():

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        ok, measured = _port_free("127.0.0.1", port)
        assert not ok and "in use" in measured.lower()
    assert _port_free("127.0.0.1", port) == (True, "free")
