"""An operator sets up a standalone node in a real browser, from first boot to a
finalised node: token, administrator with TOTP, node address and NTP, preflight (real
checks, against a local SNTP responder), a licence minted by `manage.py licence_mint`,
the MEK shown once, downloaded once and typed back, and finalise, after which the
console serves a certificate signed by the new cluster CA."""

from __future__ import annotations

import hashlib
import re
import socket
import ssl

import pytest
from playwright.sync_api import Page, expect

from pamportal.crypto import ca, mek
from tests.e2e.test_first_boot import first_administrator
from tests.preflight.support import SntpResponder
from tests.support.node import passing_preflight_env, start_node, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.processes]


def served_certificate(host: str, port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return tls.getpeercert(binary_form=True)


def test_first_boot_to_a_finalised_standalone_node(node_env, page: Page, tmp_path):
    page.set_default_timeout(20_000)
    # The node's preflight must pass on this machine: modest hardware thresholds, the
    # other ports on free high numbers (the console's own port is judged as its own).
    node_env.env.update(passing_preflight_env())
    base = start_node(node_env)
    host, port = base.removeprefix("https://").rsplit(":", 1)
    first_certificate = served_certificate(host, int(port))
    licence_path = tmp_path / "licence.json"
    node_env.manage("licence_mint", "--customer", "Example Bank plc", "--edition", "enterprise",
                    "--max-nodes", "5", "--days", "365", "--out", str(licence_path))
    token = re.search(r"Setup token: (\S+)", node_env.manage("setup_token").stdout).group(1)

    # First boot: token, administrator, TOTP.
    page.goto(base + "/")
    first_administrator(page, token)

    # The wizard goes on to the node's address.
    expect(page).to_have_url(re.compile(r"/setup/node/$"))

    with SntpResponder(skew=0.0) as sntp:
        # Node address and NTP servers; a bad address is explained.
        page.locator("input[name=address]").fill("node1")
        page.locator("textarea[name=ntp_servers]").fill(sntp.address)
        page.get_by_role("button", name=re.compile("Save and continue")).click()
        expect(page.get_by_text("is not fully qualified")).to_be_visible()
        page.locator("input[name=address]").fill(host)
        page.get_by_role("button", name=re.compile("Save and continue")).click()
        expect(page).to_have_url(re.compile(r"/setup/preflight/$"))

        # Refreshing, or coming back through /setup/, resumes at preflight.
        page.goto(base + "/setup/")
        expect(page).to_have_url(re.compile(r"/setup/preflight/$"))

        page.get_by_role("button", name="Run preflight").click()
        results = page.locator(".preflight-results")
        # Live results, polled until the run's job is over.
        expect(results).to_have_attribute("data-job-status", re.compile("succeeded|failed"), timeout=90_000)
        assert sntp.requests >= 1, "preflight did not ask the local SNTP responder"
        expect(results.locator('[data-check="clock.ntp-offset"]')).to_have_attribute("data-status", "pass")
        expect(results.locator('[data-check="address.format"]')).to_have_attribute("data-status", "pass")

    # A warning (PostgreSQL on the embedded SQLite node) blocks until accepted with a reason.
    for _ in range(5):
        forms = page.locator("form.accept-form")
        if forms.count() == 0:
            break
        forms.first.locator("textarea[name=reason]").fill("standalone lab node; accepted for this test run")
        forms.first.get_by_role("button", name="Accept warning").click()
        expect(page).to_have_url(re.compile(r"/setup/preflight/"))
    blocking = page.locator(".preflight-results").get_attribute("data-blocking")
    assert blocking == "0", page.locator(".preflight-table").inner_text()
    page.get_by_role("button", name="Next: licence").click()

    # Licence: a bad file is refused with the licensing app's message; the minted one installs.
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a licence"}')
    page.locator("input[name=licence_file]").set_input_files(str(bad))
    page.get_by_role("button", name="Install licence").click()
    expect(page.get_by_role("alert").first).to_be_visible()
    page.locator("input[name=licence_file]").set_input_files(str(licence_path))
    page.get_by_role("button", name="Install licence").click()
    expect(page.locator("#licence-installed")).to_contain_text("Example Bank plc")
    page.get_by_role("button", name="Next: Master Encryption Key").click()

    # The MEK: generated, shown once in groups, downloadable once.
    page.get_by_role("button", name="Generate the Master Encryption Key").click()
    groups = page.locator("#mek-groups code.mek-group").all_inner_texts()
    assert len(groups) == 14
    shown = "-".join(groups)
    key = mek.decode(shown)
    with page.expect_download() as download_info:
        page.get_by_role("button", name=re.compile("Download the key")).click()
    downloaded = download_info.value.path().read_text()
    assert shown in downloaded
    page.reload()
    expect(page.locator("#mek-groups")).to_have_count(0)
    expect(page.locator("#mek-status")).to_contain_text("It is not displayed again")
    expect(page.locator("#mek-downloaded")).to_contain_text("Downloaded once")
    assert shown not in page.content()

    # A typo is caught by the checksum, and what was typed is not sent back.
    typo = shown[:7] + ("A" if shown[7] != "A" else "B") + shown[8:]
    page.locator("input[name=mek]").fill(typo)
    page.get_by_role("button", name="Confirm the key").click()
    expect(page.locator("#mek-error")).to_contain_text("a character was mistyped")
    assert typo not in page.content() and shown not in page.content()
    page.locator("input[name=mek]").fill(shown.lower().replace("-", " "))
    page.get_by_role("button", name="Confirm the key").click()

    # Finalise.
    expect(page).to_have_url(re.compile(r"/setup/finalise/$"))
    page.get_by_role("button", name="Finalise setup").click()
    expect(page.locator(".node-identity")).to_contain_text("standalone")
    expect(page.locator(".node-identity")).to_contain_text(host)
    expect(page.locator("#setup-unfinished")).to_have_count(0)
    expect(page.locator("#node-licence")).to_contain_text("Example Bank plc")
    expect(page.locator("#node-certificates")).to_contain_text("Cluster CA")
    expect(page.locator("#next-steps")).to_contain_text("joining bundle")

    # The console now serves the node certificate signed by the cluster CA.
    ca_pem = (node_env.data_dir / "tls" / "cluster-ca.crt").read_bytes()
    wait_for(lambda: served_certificate(host, int(port)) != first_certificate, timeout=30,
             what="the console to serve the new certificate")
    verified = ssl.create_default_context(cadata=ca_pem.decode())
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with verified.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    assert hashlib.sha256(der).hexdigest() == ca.certificate_info(
        (node_env.data_dir / "tls" / "node.crt").read_bytes()).sha256

    # The certificates page and the MEK check page.
    page.goto(base + "/node/certificates/")
    expect(page.locator("body")).to_contain_text("Cluster CA")
    expect(page.locator("body")).to_contain_text(host)
    page.goto(base + "/node/mek-check/")
    page.locator("input[name=mek]").fill(shown)
    page.get_by_role("button", name="Check the key").click()
    expect(page.locator("#mek-check-result")).to_contain_text("That is this node")
    assert shown not in page.content()

    # Nothing the node stored or logged holds the MEK or a private key in the clear.
    forms = [shown, shown.replace("-", ""), key.hex(), shown.lower()]
    # Every table in the node's database, row by row (binary columns as hex).
    dump = node_env.shell(
        "from django.db import connection\n"
        "def cell(v):\n"
        "    return bytes(v).hex() if isinstance(v, (bytes, memoryview)) else str(v)\n"
        "with connection.cursor() as cursor:\n"
        "    for table in connection.introspection.table_names():\n"
        "        cursor.execute(f'SELECT * FROM {connection.ops.quote_name(table)}')\n"
        "        for row in cursor.fetchall():\n"
        "            print(table, '|'.join(cell(v) for v in row))\n"
    )
    assert "nodes_certificate" in dump and "v1:" in dump
    for text in forms + ["PRIVATE KEY", key.hex()]:
        assert text not in dump
    private_ders = [bytes.fromhex(line.split()[1]) for line in node_env.shell(
        "from cryptography.hazmat.primitives import serialization as s\n"
        "from pamportal.nodes import keystore\n"
        "from pamportal.nodes.models import SEAL_PURPOSE, Certificate\n"
        "for c in Certificate.objects.all():\n"
        "    pem = keystore.unseal(purpose=SEAL_PURPOSE[c.kind], sealed=c.sealed_key)\n"
        "    key = s.load_pem_private_key(pem, None)\n"
        "    print('DER', key.private_bytes(s.Encoding.DER, s.PrivateFormat.PKCS8, s.NoEncryption()).hex())\n"
    ).splitlines() if line.startswith("DER ")]
    assert len(private_ders) == 2
    stored = b"".join(p.read_bytes() for p in node_env.data_dir.glob("pamportal.sqlite3*"))
    logs = b"".join(p.read_bytes() for p in node_env.data_dir.rglob("*.log"))
    for blob in (stored, logs):
        for text in forms + ["PRIVATE KEY"]:
            assert text.encode() not in blob
        assert key not in blob
        for der in private_ders:
            assert der not in blob
    for der in private_ders:
        assert der.hex() not in dump
    assert (node_env.data_dir / "mek.key").read_bytes() == key
