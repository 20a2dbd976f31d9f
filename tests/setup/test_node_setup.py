"""The wizard after the first administrator: node address and NTP, preflight, licence,
MEK (shown once, downloaded once, confirmed by typing it back) and finalise."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.crypto import mek
from pamportal.nodes import keys, keystore
from pamportal.nodes.models import Node
from pamportal.nodes.progress import StepRefused
from pamportal.nodes.selectors import node_current
from pamportal.preflight.checks import CheckStatus
from pamportal.preflight.models import CheckOutcome, PreflightRun
from pamportal.preflight.services import preflight_warning_accept
from pamportal.setup import wizard
from tests.accounts.helpers import events

from .helpers import (
    ADDRESS,
    NTP,
    finish_preflight,
    groups_in,
    licence_file,
    post_licence,
    through_licence,
    through_node,
    through_preflight,
)

pytestmark = pytest.mark.django_db

NODE_URLS = ["setup:node", "setup:preflight", "setup:licence", "setup:mek", "setup:finalise"]
POST_URLS = ["setup:preflight_start", "setup:preflight_next", "setup:licence_next", "setup:mek_generate",
             "setup:mek_download", "setup:mek_confirm", "setup:mek_discard", "setup:finalise"]


@pytest.fixture
def admin(admin_user, login_client, client):
    login_client(admin_user, client)
    return client


# --- step 1: node address and NTP ---------------------------------------------------------
def test_setup_start_leads_the_administrator_to_the_node_step(admin):
    assert admin.get(reverse("setup:start"))["Location"] == reverse("setup:node")
    # Later steps send the operator back to the one that is due.
    for name in NODE_URLS[1:]:
        assert admin.get(reverse(name))["Location"] == reverse("setup:node")
    page = admin.get(reverse("setup:node")).content.decode()
    assert 'aria-current="step">Node address' in page


@pytest.mark.parametrize("address,message", [
    ("", "This field is required"),
    ("node1", "is not fully qualified"),
    ("-bad-.example.com", "not a valid DNS label"),
    ("node_1.example.com", "not a valid DNS label"),
    ("10.0.0.256", "ends in a number"),
    ("fe80::1::2", "is not an IP address"),
    ("a" * 64 + ".example.com", "not a valid DNS label"),
])
def test_node_address_must_be_an_fqdn_or_an_ip(admin, address, message):
    response = admin.post(reverse("setup:node"), {"address": address, "ntp_servers": "pool.ntp.org"})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not events(AuditAction.SETUP_NODE_SET)


@pytest.mark.parametrize("ntp,message", [
    ("", "This field is required"),
    ("a.example.com b.example.com c.example.com d.example.com e.example.com", "at most 4"),
    ("ntp.example.com:99999", "port must be a number"),
    ("bad_host!", "not a host name or an IP address"),
    ("pool.ntp.org, pool.ntp.org", "listed twice"),
])
def test_ntp_servers_are_one_to_four_hosts(admin, ntp, message):
    response = admin.post(reverse("setup:node"), {"address": ADDRESS, "ntp_servers": ntp})
    assert message in response.content.decode()
    assert not Node.objects.exists()


def test_node_step_saves_address_and_servers_and_resumes(admin):
    response = admin.post(reverse("setup:node"), {
        "address": " Node1.Example.COM ", "ntp_servers": "0.pool.ntp.org\n192.0.2.7, [2001:db8::1]:123,127.0.0.1:9123"})
    assert response["Location"] == reverse("setup:preflight")
    node = node_current()
    assert node.address == "node1.example.com"
    assert node.ntp_servers == ["0.pool.ntp.org", "192.0.2.7", "[2001:db8::1]:123", "127.0.0.1:9123"]
    (event,) = events(AuditAction.SETUP_NODE_SET)
    assert event.data["address"] == "node1.example.com"
    # A refresh, or coming back later, resumes at preflight; the node step shows what was saved.
    assert admin.get(reverse("setup:start"))["Location"] == reverse("setup:preflight")
    assert admin.get(reverse("setup:licence"))["Location"] == reverse("setup:preflight")
    assert "node1.example.com" in admin.get(reverse("setup:node")).content.decode()
    # The dashboard tells the administrator that setup is not finished.
    dashboard = admin.get(reverse("nodes:dashboard")).content.decode()
    assert "Setup not finished" in dashboard and reverse("setup:start") in dashboard


def test_an_ip_address_is_normalised(admin):
    admin.post(reverse("setup:node"), {"address": "2001:DB8:0::5", "ntp_servers": "pool.ntp.org"})
    assert node_current().address == "2001:db8::5"


# --- step 2: preflight ----------------------------------------------------------------------
def test_preflight_runs_with_the_node_address_and_ntp_servers(admin, admin_user):
    through_node(admin_user)
    page = admin.get(reverse("setup:preflight")).content.decode()
    assert "Preflight has not run" in page
    assert admin.post(reverse("setup:preflight_start"))["Location"] == reverse("setup:preflight")
    node = node_current()
    run = PreflightRun.objects.get(pk=node.preflight_run_id)
    assert run.context["address"] == ADDRESS and list(run.context["ntp_servers"]) == NTP
    assert "licence.valid" in run.context["skip"]
    # Running: the live partial polls, Next says to wait.
    page = admin.get(reverse("setup:preflight")).content.decode()
    assert f'id="preflight-{run.pk}-results"' in page and "hx-get" in page
    response = admin.post(reverse("setup:preflight_next"), follow=True)
    assert "still running" in response.content.decode()
    assert node_current().preflight_passed_at is None


def test_a_failing_error_blocks_next_and_a_passing_run_goes_on(admin, admin_user):
    through_node(admin_user)
    run = wizard.setup_preflight_start(user=admin_user)
    finish_preflight(run, failing={"disk.data-dir": CheckStatus.FAIL})
    page = admin.get(reverse("setup:preflight")).content.decode()
    assert 'id="preflight-next" disabled' in page and "disk.data-dir" in page
    response = admin.post(reverse("setup:preflight_next"), follow=True)
    assert "block setup" in response.content.decode()
    assert node_current().preflight_passed_at is None

    admin.post(reverse("setup:preflight_start"))
    finish_preflight(wizard.setup_preflight_start(user=admin_user))
    assert admin.post(reverse("setup:preflight_next"))["Location"] == reverse("setup:licence")
    assert events(AuditAction.SETUP_PREFLIGHT_PASSED)
    # Changing the address afterwards voids the preflight result.
    wizard.setup_node_set(user=admin_user, address="node2.example.com", ntp_servers=NTP)
    assert admin.get(reverse("setup:start"))["Location"] == reverse("setup:preflight")


def test_an_unaccepted_warning_blocks_until_accepted(admin, admin_user):
    through_node(admin_user)
    run = wizard.setup_preflight_start(user=admin_user)
    finish_preflight(run, failing={"hardware.cpu": CheckStatus.FAIL})
    response = admin.post(reverse("setup:preflight_next"), follow=True)
    assert "block setup" in response.content.decode()
    outcome = CheckOutcome.objects.get(run=run, check_id="hardware.cpu")
    preflight_warning_accept(outcome_id=outcome.pk, user=admin_user, reason="lab machine, two CPUs are enough here")
    assert admin.post(reverse("setup:preflight_next"))["Location"] == reverse("setup:licence")


# --- step 3: licence ------------------------------------------------------------------------
def test_licence_step_refuses_a_bad_file_with_the_licensing_message(admin, admin_user):
    through_preflight(admin_user)
    page = admin.get(reverse("setup:licence")).content.decode()
    assert 'name="licence_file"' in page and f'action="{reverse("setup:licence")}"' in page
    response = post_licence(admin, SimpleUploadedFile("licence.json", b"{not json", content_type="application/json"))
    assert response.status_code == 400
    assert 'role="alert"' in response.content.decode()
    assert events(AuditAction.LICENCE_REFUSED)
    response = admin.post(reverse("setup:licence_next"), follow=True)
    assert "No licence is installed" in response.content.decode()

    assert post_licence(admin, licence_file(customer="Example Bank plc"))["Location"] == reverse("setup:licence")
    page = admin.get(reverse("setup:licence")).content.decode()
    assert "Example Bank plc" in page and 'id="licence-installed"' in page
    assert admin.post(reverse("setup:licence_next"))["Location"] == reverse("setup:mek")
    assert events(AuditAction.SETUP_LICENCE_DONE)


# --- step 4: the MEK ------------------------------------------------------------------------
def test_mek_is_shown_once_downloaded_once_and_confirmed(admin, admin_user, data_dir):
    through_licence(admin_user)
    page = admin.get(reverse("setup:mek")).content.decode()
    assert "Generate the Master Encryption Key" in page and not keystore.mek_exists()
    assert admin.post(reverse("setup:mek_generate"))["Location"] == reverse("setup:mek")
    key = keystore.mek_load()
    assert (data_dir / "mek.key").stat().st_mode & 0o777 == 0o600
    node = node_current()
    assert node.mek_fingerprint == mek.fingerprint(key)
    encoded = mek.encode(key)

    first = admin.get(reverse("setup:mek"))
    assert first["Cache-Control"].startswith("no-store") or "no-store" in first["Cache-Control"]
    assert "-".join(groups_in(first.content.decode())) == encoded
    assert len(groups_in(first.content.decode())) == 14
    # Never again: a refresh says when it was shown and asks for it to be typed.
    second = admin.get(reverse("setup:mek")).content.decode()
    assert groups_in(second) == [] and encoded.split("-")[0] + "-" not in second
    assert "It is not displayed again" in second and "shown at" in second
    assert len(events(AuditAction.MEK_SHOWN)) == 1

    download = admin.post(reverse("setup:mek_download"))
    assert download.status_code == 200 and download["Content-Type"].startswith("text/plain")
    assert "attachment;" in download["Content-Disposition"]
    assert encoded in download.content.decode()
    again = admin.post(reverse("setup:mek_download"), follow=True)
    assert "already downloaded" in again.content.decode() and encoded not in again.content.decode()
    (refused,) = events(AuditAction.MEK_DOWNLOAD_REFUSED)
    assert refused.outcome == Outcome.DENIED
    assert len(events(AuditAction.MEK_DOWNLOADED)) == 1

    # Confirm: a typo is caught by the checksum; the page never echoes what was typed.
    typo = encoded[:5] + ("A" if encoded[5] != "A" else "B") + encoded[6:]
    response = admin.post(reverse("setup:mek_confirm"), {"mek": typo})
    body = response.content.decode()
    assert response.status_code == 400 and "checksum group does not match" in body
    assert typo not in body and encoded not in body and typo[:9] not in body
    other = mek.encode(mek.generate())
    body = admin.post(reverse("setup:mek_confirm"), {"mek": other}).content.decode()
    assert "but not this node" in body and other not in body
    assert [e.data["reason"] for e in events(AuditAction.MEK_CONFIRM_FAILED)] == ["checksum", "different key"]

    response = admin.post(reverse("setup:mek_confirm"), {"mek": encoded.lower().replace("-", " ")})
    assert response["Location"] == reverse("setup:finalise")
    assert node_current().mek_confirmed_at is not None and events(AuditAction.MEK_CONFIRMED)
    # Confirmed: no more downloads, no discarding.
    assert "can no longer be downloaded" in admin.post(reverse("setup:mek_download"), follow=True).content.decode()
    assert "can no longer be discarded" in admin.post(reverse("setup:mek_discard"), follow=True).content.decode()
    assert keystore.mek_load() == key


def test_an_unconfirmed_mek_may_be_discarded_and_a_new_one_generated(admin, admin_user, django_capture_on_commit_callbacks):
    through_licence(admin_user)
    admin.post(reverse("setup:mek_generate"))
    old = keystore.mek_load()
    admin.get(reverse("setup:mek"))  # shown once
    refused = admin.post(reverse("setup:mek_generate"), follow=True).content.decode()
    assert "discard it first" in refused
    with django_capture_on_commit_callbacks(execute=True):
        assert admin.post(reverse("setup:mek_discard"))["Location"] == reverse("setup:mek")
    assert not keystore.mek_exists() and node_current().mek_fingerprint == ""
    assert events(AuditAction.MEK_DISCARDED)[0].outcome == Outcome.SUCCEEDED
    admin.post(reverse("setup:mek_generate"))
    new = keystore.mek_load()
    assert new != old
    # The new key is shown (once) and its download is available again.
    assert "-".join(groups_in(admin.get(reverse("setup:mek")).content.decode())) == mek.encode(new)
    assert mek.encode(new) in admin.post(reverse("setup:mek_download")).content.decode()
    # The old key is no longer this node's key.
    assert "but not this node" in admin.post(reverse("setup:mek_confirm"), {"mek": mek.encode(old)}).content.decode()


def test_a_key_file_left_by_an_uncommitted_attempt_is_replaced(admin_user):
    through_licence(admin_user)
    keystore.mek_install(mek.generate())  # as if the row's transaction had rolled back
    keys.mek_generate(user=admin_user)
    assert node_current().mek_fingerprint == mek.fingerprint(keystore.mek_load())


def test_every_single_character_typo_is_caught_at_the_confirm_step(admin_user):
    through_licence(admin_user)
    keys.mek_generate(user=admin_user)
    compact = mek.encode(keystore.mek_load()).replace("-", "")
    tried = 0
    for position, original in enumerate(compact):
        for replacement in mek.ALPHABET:
            if replacement == original:
                continue
            typo = compact[:position] + replacement + compact[position + 1:]
            result = keys.mek_confirm(user=admin_user, typed=typo)
            assert not result.ok, f"typo at {position} ({original}->{replacement}) accepted"
            assert "mistyped" in result.message or "not valid base32" in result.message
            tried += 1
    assert tried == len(compact) * 31 == 56 * 31
    assert node_current().mek_confirmed_at is None
    failures = events(AuditAction.MEK_CONFIRM_FAILED)
    assert len(failures) == tried and {e.data["reason"] for e in failures} <= {"checksum", "format"}
    # Dropped and doubled characters are caught too.
    assert not keys.mek_confirm(user=admin_user, typed=compact[:-1]).ok
    assert not keys.mek_confirm(user=admin_user, typed=compact + "A").ok


@pytest.mark.parametrize("position", [0, 17, 51, 52, 55])
def test_a_typo_through_the_page_says_a_character_was_mistyped(admin, admin_user, position):
    through_licence(admin_user)
    keys.mek_generate(user=admin_user)
    compact = mek.encode(keystore.mek_load()).replace("-", "")
    typo = compact[:position] + ("Q" if compact[position] != "Q" else "R") + compact[position + 1:]
    response = admin.post(reverse("setup:mek_confirm"), {"mek": typo})
    assert response.status_code == 400
    assert "mistyped" in response.content.decode() and typo not in response.content.decode()


# --- roles --------------------------------------------------------------------------------
@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.AUDITOR])
def test_the_steps_after_the_administrator_need_setup_finalise(role, admin_user, make_user, login_client, client):
    login_client(make_user(f"someone-{role}", role), client)
    for name in NODE_URLS:
        assert client.get(reverse(name)).status_code == 403, name
    for name in POST_URLS:
        assert client.post(reverse(name)).status_code == 403, name
    assert not Node.objects.exists()
    # They are told setup is under way, not offered the wizard.
    assert "not finished yet" in client.get(reverse("nodes:dashboard")).content.decode()


def test_anonymous_is_sent_to_log_in(admin_user, client):
    for name in NODE_URLS:
        response = client.get(reverse(name))
        assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:login"))


def test_a_step_refuses_when_earlier_steps_are_not_done(admin_user):
    with pytest.raises(StepRefused, match="node address"):
        keys.mek_generate(user=admin_user)
    through_preflight(admin_user)
    with pytest.raises(StepRefused, match="licence"):
        wizard.setup_finalise(user=admin_user)
