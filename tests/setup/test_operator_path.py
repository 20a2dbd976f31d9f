"""An operator's path with no dead ends: what a new operator meets from first boot to
the dashboard, page by page (the browser walk is tests/e2e/test_operator_path_browser.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from pamportal.crypto import mek
from pamportal.crypto.licence import verify_licence
from pamportal.licensing.services import licence_install
from pamportal.nodes import keys, keystore
from pamportal.preflight.checks import CheckStatus
from pamportal.preflight.models import CheckOutcome
from pamportal.preflight.services import preflight_warning_accept
from pamportal.setup import administrator, wizard
from pamportal.setup import token as tokens
from tests.conftest import totp_fresh
from tests.licensing.helpers import minted

from .helpers import finish_preflight, licence_file, through_mek, through_node, through_preflight

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "a long and unusual passphrase 42"
ACCEPT_REASON = "lab machine, two CPUs are enough here"


@pytest.fixture
def admin(admin_user, login_client, client):
    login_client(admin_user, client)
    return client


def _html(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


# --- TOTP enrolment goes on to the node step ---------------------------------------------
def test_totp_enrolment_goes_on_to_the_node_step(client):
    issued = tokens.setup_token_issue()
    client.post(reverse("setup:token"), {"token": issued.token})
    client.post(reverse("setup:administrator"), {"username": "first-admin", "password1": PASSWORD, "password2": PASSWORD})
    state = client.session["pam_setup"]
    device = administrator.setup_totp_device(username=state["username"], key=state["totp_key"])
    response = client.post(reverse("setup:totp"), {"otp_token": totp_fresh(device)})
    assert response.status_code == 302 and response["Location"] == reverse("setup:node")
    page = _html(client.get(response["Location"]))
    assert 'aria-current="step">Node address' in page
    assert "Setup complete" not in page and "Setup not finished" not in page
    assert "Administrator first-admin created" in page


# --- no licence banner before the licence step ------------------------------------------
def test_no_licence_banner_before_the_licence_step(admin, admin_user):
    for name in ("setup:node", "nodes:dashboard"):
        assert "No valid licence" not in _html(admin.get(reverse(name)))
    through_node(admin_user)
    assert "No valid licence" not in _html(admin.get(reverse("setup:preflight")))
    finish_preflight(wizard.setup_preflight_start(user=admin_user))
    wizard.setup_preflight_pass(user=admin_user)
    # From the licence step on, a missing licence is worth the banner.
    assert "No valid licence" in _html(admin.get(reverse("nodes:dashboard")))


# --- node step: prefilled address, NTP advice --------------------------------------------
def test_node_address_is_prefilled_and_ntp_has_advice_for_an_isolated_network(admin, settings):
    settings.PAM_NODE_ADDRESS = "pam7.lab.example.net"
    page = _html(admin.get(reverse("setup:node")))
    assert re.search(r'<input[^>]*name="address"[^>]*value="pam7\.lab\.example\.net"', page)
    assert "internal NTP servers" in page and "hypervisor" in page
    assert "pool.ntp.org" in page and "UDP port 123" in page


def test_setup_token_help_has_no_literal_backticks(client):
    tokens.setup_token_issue()
    page = _html(client.get(reverse("setup:token")))
    assert "`" not in page
    assert "<code>make run</code>" in page and "<code>manage.py setup_token</code>" in page


# --- the licence file picker and licence_mint -----------------------------------------------
def test_licence_picker_accepts_a_dot_licence_file(admin, admin_user):
    through_preflight(admin_user)
    page = _html(admin.get(reverse("setup:licence")))
    accept = re.search(r'<input type="file" name="licence_file"[^>]*accept="([^"]+)"', page).group(1)
    assert ".licence" in accept.split(",")
    upload = licence_file()
    upload.name = "lab.licence"
    assert admin.post(reverse("setup:licence"), {"licence_file": upload}).status_code == 302
    assert "licence-installed" in _html(admin.get(reverse("setup:licence")))
    assert ".licence" in _html(admin.get(reverse("licensing:upload"))).split('accept="')[1].split('"')[0]


def _mint(cwd: Path, *args: str, **env: str):
    environ = {k: v for k, v in os.environ.items() if k not in ("PAM_DATA_DIR", "DJANGO_SETTINGS_MODULE")}
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "licence_mint", "--customer", "Lab", "--edition", "enterprise",
         "--max-nodes", "3", "--days", "365", *args],
        cwd=cwd, env={**environ, **env}, capture_output=True, text=True, timeout=120,
    )


def test_licence_mint_as_the_readme_shows_creates_no_data_dir(tmp_path):
    data_dir = tmp_path / "data"
    result = _mint(tmp_path, "--out", "lab.licence", PAM_DATA_DIR=str(data_dir))
    assert result.returncode == 0, result.stderr
    assert "Wrote lab.licence" in result.stderr
    assert verify_licence((tmp_path / "lab.licence").read_bytes(), allow_test_keys=True).customer == "Lab"
    assert not data_dir.exists()  # no secret_key, logs, static or broker directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.licence"]


def test_licence_mint_without_out_prints_the_licence(tmp_path):
    result = _mint(tmp_path, PAM_DATA_DIR=str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert verify_licence(result.stdout.encode(), allow_test_keys=True).customer == "Lab"
    assert result.stdout.endswith("\n") and list(tmp_path.iterdir()) == []
    # The default data dir of the checkout is not touched either: nothing is created.
    assert "var" not in {p.name for p in tmp_path.iterdir()}


# --- preflight: accepted warnings, real ports ----------------------------------------------
def _accepted_run(admin_user):
    through_node(admin_user)
    run = wizard.setup_preflight_start(user=admin_user)
    finish_preflight(run, failing={"hardware.cpu": CheckStatus.FAIL})
    outcome = CheckOutcome.objects.get(run=run, check_id="hardware.cpu")
    preflight_warning_accept(outcome_id=outcome.pk, user=admin_user, reason=ACCEPT_REASON)
    return run


def test_an_accepted_warning_shows_as_accepted(admin, admin_user):
    _accepted_run(admin_user)
    page = _html(admin.get(reverse("setup:preflight")))
    row = re.search(r'<tr[^>]*data-check="hardware.cpu".*?</tr>', page, re.S).group(0)
    assert 'data-accepted="1"' in row and "Accepted" in row and "Failed" not in row
    assert ACCEPT_REASON in row
    assert "1 accepted warning" in page and "· 0 failed" in page
    # Details are collapsed in <details>, open only for what still blocks.
    assert "<details>" in row and "<details open>" not in page


def test_finalise_summary_names_the_accepted_warnings(admin, admin_user):
    _accepted_run(admin_user)
    wizard.setup_preflight_pass(user=admin_user)
    licence_install(data=minted(), user=admin_user)
    wizard.setup_licence_done(user=admin_user)
    keys.mek_generate(user=admin_user)
    keys.mek_reveal(user=admin_user)
    assert keys.mek_confirm(user=admin_user, typed=mek.encode(keystore.mek_load())).ok
    page = _html(admin.get(reverse("setup:finalise")))
    assert re.search(r'id="finalise-preflight">passed with 1 accepted warning ', page)


def test_finalise_summary_without_accepted_warnings(admin, admin_user):
    through_mek(admin_user)
    page = _html(admin.get(reverse("setup:finalise")))
    assert re.search(r'id="finalise-preflight">passed \d{4}-', page)
    assert "accepted warning" not in page


def test_preflight_port_labels_show_the_port_really_checked(admin, admin_user, settings):
    settings.PAM_HTTPS_PORT = 8443
    through_node(admin_user)
    finish_preflight(wizard.setup_preflight_start(user=admin_user))
    page = _html(admin.get(reverse("setup:preflight")))
    assert "Port 8443 free (web console (HTTPS))" in page
    assert "Port 443 free" not in page
    assert "This node uses port 8443 where the standard is 443." in page
    row = re.search(r'<tr[^>]*data-check="port.9002.free".*?</tr>', page, re.S).group(0)
    assert "PAM client-side service" in row and "Reserved" in row


# --- the dashboard after finalise; the header on every page ----------------------------------
def test_dashboard_after_finalise_links_to_joining_bundles(admin, admin_user):
    through_mek(admin_user)
    assert admin.post(reverse("setup:finalise")).status_code == 302
    page = _html(admin.get(reverse("nodes:dashboard")))
    assert "coming in the next release" not in page
    assert f'href="{reverse("cluster:bundles")}"' in page and "Cluster → Joining bundles" in page
    assert "Setup not finished" not in page and "No valid licence" not in page


@pytest.mark.parametrize("role", ["administrator", "operator", "approver", "auditor", "viewer"])
def test_every_user_finds_two_factor_in_the_account_menu(role, admin_user, make_user, login_client, client):
    user = make_user(f"user-{role}", role)
    login_client(user, client)
    page = _html(client.get(reverse("jobs:list")))
    menu = re.search(r'<details class="dropdown account-menu".*?</details>', page, re.S).group(0)
    assert "<summary" in menu and "Account</summary>" in menu
    assert f'href="{reverse("accounts:totp_enrol")}"' in menu and "Two-factor" in menu
    assert client.get(reverse("accounts:totp_enrol")).status_code == 200


def test_favicon_is_linked_and_served(admin):
    page = _html(admin.get(reverse("nodes:dashboard")))
    href = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', page).group(1)
    assert href.endswith("favicon.svg")
    assert (Path(settings.BASE_DIR) / "static" / "pamportal" / "favicon.svg").read_text().startswith("<svg")


def test_no_inline_styles_or_scripts_on_the_operator_pages(admin, admin_user):
    through_mek(admin_user)
    for name in ("setup:finalise", "setup:node", "setup:preflight", "setup:licence"):
        page = _html(admin.get(reverse(name)))
        assert "style=" not in page and "<style" not in page
        assert not re.search(r"<script(?![^>]*\bsrc=)", page)
