"""An operator's first boot, in a real browser against a real node (console + worker)."""

import base64
import re

import pytest
from django_otp.oath import TOTP
from playwright.sync_api import Page, expect

from tests.support.node import start_node
from tests.support.totp import fresh_code

pytestmark = [pytest.mark.browser, pytest.mark.processes]

PASSWORD = "a long and unusual passphrase 42"


def secret_key(secret_base32: str) -> bytes:
    secret = secret_base32.replace(" ", "").upper()
    return base64.b32decode(secret + "=" * (-len(secret) % 8))


def totp_code(secret_base32: str, offset_steps: int = 0) -> str:
    totp = TOTP(secret_key(secret_base32), step=30, digits=6)
    totp.time = totp.time + offset_steps * 30
    return f"{totp.token():06d}"


def first_administrator(page: Page, token: str) -> str:
    """From the token page: the token, the first administrator (``first-admin``,
    PASSWORD) and TOTP enrolment. Returns the TOTP secret as shown (base32)."""
    page.locator("input[name=token]").fill(token)
    page.get_by_role("button", name="Continue").click()
    page.locator("input[name=username]").fill("first-admin")
    page.locator("input[name=password1]").fill(PASSWORD)
    page.locator("input[name=password2]").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("Continue|Next")).click()
    secret = page.locator(".secret").inner_text()
    page.locator("input[name=otp_token]").fill(totp_code(secret))
    page.get_by_role("button", name="Create the administrator").click()
    return secret


def test_first_boot_to_dashboard_with_facts(node_env, page: Page):
    page.set_default_timeout(20_000)
    base = start_node(node_env)
    printed = node_env.manage("setup_token").stdout
    token = re.search(r"Setup token: (\S+)", printed).group(1)

    # Every page leads to the setup wizard while no administrator exists.
    page.goto(base + "/")
    expect(page).to_have_url(re.compile(r"/setup/"))

    # A wrong token is refused with a reason; the right one lets the operator on.
    page.locator("input[name=token]").fill("WRONG-TOKEN")
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("alert")).to_contain_text("not the setup token")
    page.locator("input[name=token]").fill(token)
    page.get_by_role("button", name="Continue").click()

    page.locator("input[name=username]").fill("first-admin")
    page.locator("input[name=password1]").fill(PASSWORD)
    page.locator("input[name=password2]").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("Continue|Next")).click()

    secret = page.locator(".secret").inner_text()
    expect(page.locator(".qr svg")).to_be_visible()
    code, enrolled_step = fresh_code(secret_key(secret))
    page.locator("input[name=otp_token]").fill(code)
    page.get_by_role("button", name="Create the administrator").click()

    # Logged in, the wizard goes on to the node's address (the one it started with).
    expect(page).to_have_url(re.compile(r"/setup/node/$"))
    expect(page.locator("input[name=address]")).to_have_value("127.0.0.1")
    page.goto(base + "/")
    identity = page.locator(".node-identity")
    expect(identity).to_contain_text("127.0.0.1")
    expect(identity).to_contain_text("standalone")

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/account/login/"))

    page.locator("input[name=username]").fill("first-admin")
    page.locator("input[name=password]").fill(PASSWORD)
    # A later time step's code: django-otp refuses a step used once already.
    page.locator("input[name=otp_token]").fill(fresh_code(secret_key(secret), enrolled_step)[0])
    page.get_by_role("button", name="Log in").click()

    # The facts job started at setup has run on the worker; the dashboard shows them.
    facts = page.locator("#node-facts")
    expect(facts).to_contain_text("CPU count", timeout=60_000)
    expect(facts).to_contain_text("Python")
    expect(facts).to_contain_text("Django")
    expect(facts).to_contain_text("Listening ports")
    # The console's own port is among the listening ports the worker found.
    expect(facts).to_contain_text(base.rsplit(":", 1)[1])
