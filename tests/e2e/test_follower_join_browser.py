"""One follower joins a cluster in real browsers: the operator generates and downloads a
joining bundle on the leader (127.0.0.21); the follower's administrator (127.0.0.22)
uploads it with the MEK, checks the way to the leader and asks to join; two approvers,
each in a browser session of their own, approve with their 6-digit codes; the follower's
page follows the request live until the node has joined, and the leader's cluster page
shows two members."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.preflight.support import SntpResponder
from tests.support.cluster import PASSWORD, USERS, cluster_node, finalise_leader, run, start
from tests.support.node import wait_for
from tests.support.totp import fresh_code

pytestmark = [pytest.mark.browser, pytest.mark.processes, pytest.mark.cluster]

LEADER, FOLLOWER = "127.0.0.21", "127.0.0.22"
APPROVERS = ("approver-1", "approver-2")


def totp_keys(env, *names_and_roles: tuple[str, str]) -> dict[str, str]:
    """Create the users (if missing) and return each one's TOTP key, so the test computes
    codes at the moment it types them."""
    made = ", ".join(f"({name!r}, Role.{role})" for name, role in names_and_roles)
    return run(env, USERS + f"""
result = {{}}
for name, role in [{made}]:
    u = user(name, role)
    result[name] = TOTPDevice.objects.get(user=u).bin_key.hex()
""")


def log_in(page: Page, base: str, username: str, key_hex: str, after: int = -1) -> int:
    """Log in with the current step's code (one after ``after``, the last step the user
    typed, waiting for it if need be); returns that step, which the user's next code
    must come after (django-otp accepts a step once, and none before it)."""
    page.goto(base + "/account/login/")
    page.locator("input[name=username]").fill(username)
    page.locator("input[name=password]").fill(PASSWORD)
    code, step = fresh_code(bytes.fromhex(key_hex), after)
    page.locator("input[name=otp_token]").fill(code)
    page.get_by_role("button", name="Log in").click()
    expect(page).not_to_have_url(re.compile(r"/account/login/"))
    return step


def new_page(browser: Browser, contexts: list[BrowserContext]) -> Page:
    context = browser.new_context(ignore_https_errors=True)  # the nodes' certificates are their own CA's
    contexts.append(context)
    page = context.new_page()
    page.set_default_timeout(20_000)
    return page


def bundle_made_and_downloaded(page: Page, base: str, address: str, folder: Path) -> Path:
    """The operator asks for a bundle for ``address`` on the bundles page, waits for its
    job (the page reloaded until the bundle can be downloaded) and downloads it."""
    page.goto(base + "/cluster/bundles/")
    page.locator("input[name=follower_address]").fill(address)
    page.get_by_role("button", name="Generate a bundle").click()
    # the answer to the form first (a reload while it loads is no reload)
    expect(page.locator("body")).to_contain_text(f"A bundle for {address} is being made")
    download_button = page.locator("tbody tr", has_text=address).get_by_role("button", name="Download")

    def bundle_ready():
        page.reload()  # the bundle is made by a job on the leader's worker
        return download_button.count() == 1

    wait_for(bundle_ready, timeout=60, interval=1, what=f"the bundle job for {address}")
    with page.expect_download() as download_info:
        download_button.click()
    path = folder / download_info.value.suggested_filename
    download_info.value.save_as(path)
    return path


def stopped_node(nodes: dict) -> str:
    """Why a node is no longer running, if one is not (``serve`` stops the whole node
    when one of its processes dies): the tail of its log."""
    for address, env in nodes.items():
        for proc in env.processes:
            if proc.poll() is not None:
                return f"the node on {address} stopped (exit {proc.returncode}); serve.log ends:\n{env.log('serve')[-4000:]}"
    return ""


def test_a_follower_joins_in_the_browser(browser: Browser, tmp_path):
    started = time.monotonic()
    contexts: list[BrowserContext] = []
    nodes = {}
    with SntpResponder() as sntp:
        try:
            nodes = {address: cluster_node(tmp_path, address, sntp.address) for address in (LEADER, FOLLOWER)}
            leader, follower = nodes[LEADER], nodes[FOLLOWER]
            leader_base = start(leader, LEADER)
            follower_base = start(follower, FOLLOWER)
            mek_text = finalise_leader(leader, LEADER, sntp.address)
            keys = totp_keys(leader, ("operator", "OPERATOR"), *((name, "APPROVER") for name in APPROVERS))
            admin_key = totp_keys(follower, ("admin", "ADMINISTRATOR"))["admin"]

            # The leader: the operator generates the bundle for the follower and downloads it.
            operator = new_page(browser, contexts)
            log_in(operator, leader_base, "operator", keys["operator"])
            bundle_path = bundle_made_and_downloaded(operator, leader_base, FOLLOWER, tmp_path)
            assert bundle_path.stat().st_size > 0
            row = operator.locator("tbody tr", has_text=FOLLOWER)
            operator.reload()
            expect(row.locator("td").nth(5)).to_have_text("1")  # downloaded once

            # The follower: its administrator joins it to the cluster.
            admin = new_page(browser, contexts)
            log_in(admin, follower_base, "admin", admin_key)
            admin.goto(follower_base + "/setup/")
            expect(admin).to_have_url(re.compile(r"/setup/node/$"))
            admin.get_by_role("link", name="Join an existing cluster").click()
            expect(admin).to_have_url(re.compile(r"/setup/join/$"))
            admin.locator("input[name=bundle]").set_input_files(str(bundle_path))
            admin.locator("input[name=mek]").fill(mek_text)
            admin.locator("input[name=own_address]").fill(FOLLOWER)
            admin.get_by_role("button", name="Open the bundle").click()
            expect(admin).to_have_url(re.compile(r"/setup/join/status/$"))
            status = admin.locator("#join-status")
            expect(status).to_have_attribute("data-join-state", "opened")
            assert mek_text not in admin.content()
            admin.get_by_role("button", name="Check the way to the leader").click()
            expect(status).to_have_attribute("data-join-state", "checked", timeout=30_000)
            admin.get_by_role("button", name="Ask the leader to join").click()
            expect(status).to_have_attribute("data-join-state", "requested")
            expect(status).to_contain_text("Approvers on the leader vote on it now")

            expect(status).to_contain_text("approvals 0 of 2")

            # Each approver, in a browser session of their own, approves with a fresh code.
            for number, name in enumerate(APPROVERS, start=1):
                page = new_page(browser, contexts)
                login_step = log_in(page, leader_base, name, keys[name])
                page.goto(leader_base + "/cluster/requests/")
                request = page.locator("article", has_text=f"{FOLLOWER}").filter(
                    has=page.get_by_role("button", name="Vote")).first
                request.get_by_label("Approve").check()
                # A step after the login's (waiting for it if need be): a step is
                # accepted once, and none older.
                code, _step = fresh_code(bytes.fromhex(keys[name]), login_step)
                request.locator("input[name=totp_code]").fill(code)
                request.get_by_role("button", name="Vote").click()
                expect(page.locator("body")).to_contain_text("Your vote is recorded")
                expect(page.locator("body")).to_contain_text(f"{name} approved")
                if number < len(APPROVERS):
                    # The follower's page follows the votes without a reload.
                    expect(status).to_contain_text(f"approvals {number} of 2", timeout=30_000)

            # The follower's page follows the request live (htmx) until the node has joined.
            try:
                expect(status).to_have_attribute("data-join-state", "joined", timeout=90_000)
            except AssertionError:
                if down := stopped_node(nodes):
                    raise AssertionError(down)
                raise
            expect(status).to_contain_text("This node is a voting member of the cluster")

            # The leader's cluster page: two members, both active, two voting etcd members.
            operator.goto(leader_base + "/cluster/")
            expect(operator.locator("body")).to_contain_text("2 voting members")
            rows = operator.locator("table tbody tr")
            expect(rows).to_have_count(2)
            for address in (LEADER, FOLLOWER):
                expect(rows.filter(has_text=address)).to_contain_text("Active")
            expect(operator.locator("#failure-tolerance")).to_have_text("0")
        finally:
            for context in contexts:
                context.close()
            for env in nodes.values():
                env.stop()
    print(f"follower join in the browser: {time.monotonic() - started:.1f} s")
