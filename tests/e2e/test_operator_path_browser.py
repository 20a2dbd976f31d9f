"""A new operator's path with no dead ends, in a real browser at 1280x800: first boot,
TOTP, the node step (prefilled), preflight (real port numbers, compact table, accepted
warnings shown as accepted), a `.licence` file from `licence_mint`, the MEK, finalise
("passed with N accepted warnings") and the dashboard (Cluster → Joining bundles); the
header stays one line and leads every user to Account → two-factor."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.test_first_boot import first_administrator
from tests.preflight.support import SntpResponder
from tests.support.node import free_port, start_node

pytestmark = [pytest.mark.browser, pytest.mark.processes]

REASON = "standalone lab node; accepted for this test run"


def header_is_one_line(page: Page) -> None:
    header = page.locator("header.site-header").bounding_box()
    brand = page.locator("header .brand").bounding_box()
    logout = page.get_by_role("button", name="Log out").bounding_box()
    assert header["height"] < 90, header
    assert logout["x"] + logout["width"] <= header["x"] + header["width"] + 1, (header, logout)
    assert abs((logout["y"] + logout["height"] / 2) - (brand["y"] + brand["height"] / 2)) < 20, (brand, logout)


def test_operator_path_has_no_dead_ends(node_env, page: Page, tmp_path):
    page.set_default_timeout(20_000)
    page.set_viewport_size({"width": 1280, "height": 800})
    client_port = free_port()
    node_env.env.update(
        PAM_PREFLIGHT_MIN_CPUS="4096",  # a warning to accept
        PAM_PREFLIGHT_MIN_MEMORY_GIB="0.1",
        PAM_PREFLIGHT_MIN_DISK_FREE_GIB="0.1",
        PAM_PREFLIGHT_PROBE_TIMEOUT="2",
        PAM_CLIENT_PORT=str(client_port),
        PAM_ETCD_PEER_PORT=str(free_port()),
        PAM_SETUP_API_PORT=str(free_port()),
        PAM_DELEGATION_API_PORT=str(free_port()),
    )
    base = start_node(node_env)
    host, port = base.removeprefix("https://").rsplit(":", 1)
    licence_path = tmp_path / "lab.licence"
    node_env.manage("licence_mint", "--customer", "Lab", "--edition", "enterprise",
                    "--max-nodes", "3", "--days", "365", "--out", str(licence_path))
    token = re.search(r"Setup token: (\S+)", node_env.manage("setup_token").stdout).group(1)

    # First boot: the token's help shows code, not back-ticks; a favicon is served.
    page.goto(base + "/")
    expect(page.locator("body")).not_to_contain_text("`")
    icon = page.locator('link[rel="icon"]').get_attribute("href")
    assert page.request.get(base + icon).ok
    first_administrator(page, token)

    # On to the node step: no "Setup complete", no licence banner, the address prefilled.
    expect(page).to_have_url(re.compile(r"/setup/node/$"))
    body = page.locator("body")
    expect(body).not_to_contain_text("Setup complete")
    expect(body).not_to_contain_text("Setup not finished")
    expect(page.locator(".licence-banner")).to_have_count(0)
    expect(page.locator("input[name=address]")).to_have_value(host)
    expect(body).to_contain_text("internal NTP servers")
    header_is_one_line(page)

    # Account → two-factor, from the header.
    page.locator("#account-menu summary").click()
    page.locator("#account-two-factor").click()
    expect(page).to_have_url(re.compile(r"/account/totp/$"))
    page.go_back()
    expect(page).to_have_url(re.compile(r"/setup/node/$"))

    with SntpResponder(skew=0.0) as sntp:
        page.locator("textarea[name=ntp_servers]").fill(sntp.address)
        page.get_by_role("button", name=re.compile("Save and continue")).click()
        expect(page).to_have_url(re.compile(r"/setup/preflight/$"))
        expect(page.locator(".licence-banner")).to_have_count(0)
        page.get_by_role("button", name="Run preflight").click()
        results = page.locator(".preflight-results")
        expect(results).to_have_attribute("data-job-status", re.compile("succeeded|failed"), timeout=90_000)

    # The port rows name the port really checked, and 9002's purpose.
    table = page.locator(".preflight-table")
    expect(table.locator('[data-check="port.443.free"] .check-title')).to_have_text(
        f"Port {port} free (web console (HTTPS))")
    row_9002 = table.locator('[data-check="port.9002.free"]')
    expect(row_9002.locator(".check-title")).to_contain_text(f"Port {client_port} free")
    row_9002.locator("summary").click()
    expect(row_9002.locator(".check-note")).to_contain_text("PAM client-side service")

    # Warnings accepted with a reason show as accepted, not failed.
    accepted = 0
    for _ in range(5):
        forms = page.locator("form.accept-form")
        if forms.count() == 0:
            break
        forms.first.locator("textarea[name=reason]").fill(REASON)
        forms.first.get_by_role("button", name="Accept warning").click()
        expect(page).to_have_url(re.compile(r"/setup/preflight/"))
        accepted += 1
    assert accepted >= 1
    assert page.locator(".preflight-results").get_attribute("data-blocking") == "0", table.inner_text()
    cpu = table.locator('[data-check="hardware.cpu"]')
    expect(cpu).to_have_attribute("data-accepted", "1")
    expect(cpu.locator(".status")).to_have_text("Accepted")
    expect(page.locator(".preflight-results > p").first).to_contain_text(f"{accepted} accepted warning")
    # Readable at 1280 px: one compact row a check, details collapsed.
    height = table.bounding_box()["height"]
    assert height < 1100, f"the preflight table is {height:.0f} px tall"
    page.get_by_role("button", name="Next: licence").click()

    # Licence: the picker takes the `.licence` file licence_mint wrote.
    picker = page.locator("input[name=licence_file]")
    assert ".licence" in picker.get_attribute("accept").split(",")
    picker.set_input_files(str(licence_path))
    page.get_by_role("button", name="Install licence").click()
    expect(page.locator("#licence-installed")).to_contain_text("Lab")
    page.get_by_role("button", name="Next: Master Encryption Key").click()

    # The MEK.
    page.get_by_role("button", name="Generate the Master Encryption Key").click()
    shown = "-".join(page.locator("#mek-groups code.mek-group").all_inner_texts())
    page.locator("input[name=mek]").fill(shown)
    page.get_by_role("button", name="Confirm the key").click()

    # Finalise says how preflight passed.
    expect(page).to_have_url(re.compile(r"/setup/finalise/$"))
    expect(page.locator("#finalise-preflight")).to_contain_text(
        f"passed with {accepted} accepted warning{'s' if accepted != 1 else ''}")
    page.get_by_role("button", name="Finalise setup").click()

    # The dashboard leads on to Cluster → Joining bundles.
    expect(page.locator(".node-identity")).to_contain_text("standalone")
    expect(page.locator("#setup-unfinished")).to_have_count(0)
    expect(page.locator(".licence-banner")).to_have_count(0)
    expect(body).not_to_contain_text("coming in the next release")
    header_is_one_line(page)
    page.locator("#next-steps-bundles").click()
    expect(page).to_have_url(re.compile(r"/cluster/bundles/$"))
