"""A follower starts again with another cluster's bundle, in a real browser: its
administrator (127.0.0.72) opens a bundle of cluster A (leader 127.0.0.71) with A's MEK,
changes their mind, clicks "Start again with another bundle", opens a bundle of cluster
B (leader 127.0.0.73) with B's MEK, checks the way to B's leader and asks it to join;
B's leader accepts the request (so the node proved it holds B's MEK). On the follower,
A's MEK is gone, the audit signing key is sealed under B's, and the trail verifies."""

from __future__ import annotations

import base64
import re
import time

import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from tests.preflight.support import SntpResponder
from tests.support.cluster import USERS, cluster_node, finalise_leader, run, start
from tests.support.node import wait_for

from .test_follower_join_browser import log_in, new_page, stopped_node, totp_keys

pytestmark = [pytest.mark.browser, pytest.mark.processes, pytest.mark.cluster]

LEADER_A, FOLLOWER, LEADER_B = "127.0.0.71", "127.0.0.72", "127.0.0.73"


def bundle_of(leader, tmp_path, name: str) -> str:
    """A bundle for the follower, made by the leader's worker; the file's path."""
    bundle_id = run(leader, USERS + f"""
from pamportal.cluster import bundles as cs
result = str(cs.bundle_generate(user=user('operator', Role.OPERATOR), follower_address={FOLLOWER!r}).bundle_id)
""")
    data = wait_for(lambda: run(leader, USERS + f"""
import base64
from pamportal.cluster import bundles as cs
from pamportal.cluster.models import JoiningBundle
b = JoiningBundle.objects.get(bundle_id={bundle_id!r})
result = base64.b64encode(cs.bundle_download(user=user('operator', Role.OPERATOR), bundle_id=b.bundle_id).data).decode() if b.file else None
"""), timeout=60, interval=1, what=f"the bundle job on {name}")
    path = tmp_path / f"{name}.bundle"
    path.write_bytes(base64.b64decode(data))
    return str(path)


def test_discard_then_another_clusters_bundle_in_the_browser(browser: Browser, tmp_path):
    started = time.monotonic()
    contexts: list[BrowserContext] = []
    nodes = {}
    with SntpResponder() as sntp:
        try:
            nodes = {address: cluster_node(tmp_path, address, sntp.address)
                     for address in (LEADER_A, FOLLOWER, LEADER_B)}
            leader_a, follower, leader_b = nodes[LEADER_A], nodes[FOLLOWER], nodes[LEADER_B]
            bases = {address: start(env, address) for address, env in nodes.items()}
            follower_base = bases[FOLLOWER]
            mek_a = finalise_leader(leader_a, LEADER_A, sntp.address)
            mek_b = finalise_leader(leader_b, LEADER_B, sntp.address)
            assert mek_a != mek_b
            bundle_a = bundle_of(leader_a, tmp_path, "cluster-a")
            bundle_b = bundle_of(leader_b, tmp_path, "cluster-b")
            admin_key = totp_keys(follower, ("admin", "ADMINISTRATOR"))["admin"]

            admin = new_page(browser, contexts)
            log_in(admin, follower_base, "admin", admin_key)
            admin.goto(follower_base + "/setup/")
            admin.get_by_role("link", name="Join an existing cluster").click()
            expect(admin).to_have_url(re.compile(r"/setup/join/$"))

            def open_bundle(path: str, mek_text: str) -> None:
                admin.locator("input[name=bundle]").set_input_files(path)
                admin.locator("input[name=mek]").fill(mek_text)
                admin.locator("input[name=own_address]").fill(FOLLOWER)
                admin.get_by_role("button", name="Open the bundle").click()

            # Cluster A's bundle opens with A's MEK…
            open_bundle(bundle_a, mek_a)
            expect(admin).to_have_url(re.compile(r"/setup/join/status/$"))
            status = admin.locator("#join-status")
            expect(status).to_have_attribute("data-join-state", "opened")
            expect(status).to_contain_text(LEADER_A)

            # …and the operator starts again.
            admin.get_by_role("button", name="Start again with another bundle").click()
            expect(admin).to_have_url(re.compile(r"/setup/join/$"))
            expect(admin.locator("body")).to_contain_text("The join is discarded")

            # Cluster B's bundle opens with B's MEK (before: "This node already holds another MEK").
            open_bundle(bundle_b, mek_b)
            expect(admin).to_have_url(re.compile(r"/setup/join/status/$"))
            expect(status).to_have_attribute("data-join-state", "opened")
            expect(status).to_contain_text(LEADER_B)
            assert "already holds another" not in admin.content()
            admin.get_by_role("button", name="Check the way to the leader").click()
            expect(status).to_have_attribute("data-join-state", "checked", timeout=30_000)
            admin.get_by_role("button", name="Ask the leader to join").click()
            try:
                expect(status).to_have_attribute("data-join-state", "requested")
            except AssertionError:
                if down := stopped_node(nodes):
                    raise AssertionError(down) from None
                raise
            expect(status).to_contain_text("Approvers on the leader vote on it now")

            # B's leader holds the request (its MEK proof checked); A's has none.
            assert run(leader_b, f"""
from pamportal.cluster.models import JoinRequest
result = JoinRequest.objects.filter(follower_address={FOLLOWER!r}, state="pending").count()
""") == 1
            assert run(leader_a, """
from pamportal.cluster.models import JoinRequest
result = JoinRequest.objects.count()
""") == 0
            # The follower: B's key, A's forgotten (audited), the audit trail whole and
            # its signing key sealed under B's key.
            facts = run(follower, f"""
import json
from pamportal.audit import signing
from pamportal.audit.checkpoints import audit_chain_check, audit_checkpoint_periodic
from pamportal.audit.models import AuditEvent, AuditSigningKey
from pamportal.crypto import mek
from pamportal.nodes import keystore
signing.clear_cache()
checkpoint = audit_checkpoint_periodic()
row = AuditSigningKey.objects.get(retired_at__isnull=True)
mek.unseal(mek.decode({mek_b!r}), signing.PURPOSE, row.sealed_private)
result = {{"b": keystore.mek_matches(mek.decode({mek_b!r})), "a": keystore.mek_matches(mek.decode({mek_a!r})),
          "discarded": [json.loads(e.details)["reason"] for e in AuditEvent.objects.filter(action="mek.discarded")],
          "keys": AuditSigningKey.objects.count(), "chain": audit_chain_check(full=True).ok,
          "checkpoint": checkpoint["ok"]}}
""")
            assert facts["b"] and not facts["a"] and facts["keys"] == 1 and facts["chain"] and facts["checkpoint"]
            assert len(facts["discarded"]) == 1 and "discarded by admin" in facts["discarded"][0]
        finally:
            for context in contexts:
                context.close()
            for env in nodes.values():
                env.stop()
    print(f"discard then another cluster in the browser: {time.monotonic() - started:.1f} s")
