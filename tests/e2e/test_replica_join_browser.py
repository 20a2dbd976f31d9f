"""The follower join of ``test_follower_join_browser`` on a replicated cluster, in real
browsers: the leader (127.0.0.161) runs on its Patroni PostgreSQL member; the follower
(127.0.0.162) is told before it asks that its local accounts will be replaced, joins
with two approvals voted in the browser, and becomes a streaming replica, its page
going to the login once its console is on the cluster's database. Then an
approver enrolled on the leader logs on at the follower's console with a 6-digit code
(the cluster's users and second factors on any node), where the cluster page shows the
database led by the leader; and a bundle asked for on the follower's console is made by
the leader (the cluster's jobs run there) and downloaded from the follower's page."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from tests.e2e.test_follower_join_browser import (
    bundle_made_and_downloaded,
    log_in,
    new_page,
    stopped_node,
    totp_keys,
)
from tests.preflight.support import SntpResponder
from tests.replication.support import missing_tools
from tests.replication.test_replica_join import Lab, leader_move, patroni_cluster
from tests.support.cluster import finalise_leader, run, start
from tests.support.node import https_get, wait_for
from tests.support.totp import fresh_code

pytestmark = [
    pytest.mark.browser, pytest.mark.processes, pytest.mark.cluster, pytest.mark.timeout(900),
    pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or ""),
]

LEADER, FOLLOWER = "127.0.0.161", "127.0.0.162"
APPROVERS = ("approver-1", "approver-2")


def test_a_follower_joins_a_replicated_cluster_in_the_browser(browser: Browser, tmp_path):
    started = time.monotonic()
    contexts: list[BrowserContext] = []
    figures: dict[str, float] = {}
    with SntpResponder() as sntp:
        lab = Lab(tmp_path, sntp.address)
        try:
            leader = lab.node(LEADER)
            start(leader, LEADER)
            mek_text = finalise_leader(leader, LEADER, sntp.address)
            moving = time.monotonic()
            leader_move(lab, LEADER)
            figures["leader onto Patroni s"] = time.monotonic() - moving
            leader_base = f"https://{LEADER}:8443"
            follower = lab.node(FOLLOWER)
            follower_base = start(follower, FOLLOWER)
            keys = totp_keys(leader, ("operator", "OPERATOR"), *((name, "APPROVER") for name in APPROVERS))
            admin_key = totp_keys(follower, ("admin", "ADMINISTRATOR"))["admin"]

            # The leader (on its Patroni member): the operator makes and downloads the bundle.
            operator = new_page(browser, contexts)
            operator_step = log_in(operator, leader_base, "operator", keys["operator"])
            operator.goto(leader_base + "/cluster/")
            expect(operator.locator("#database-standing")).to_contain_text("PostgreSQL under Patroni")
            bundle_path = bundle_made_and_downloaded(operator, leader_base, FOLLOWER, tmp_path)

            # The follower: told before it asks that its accounts are replaced by the cluster's.
            admin = new_page(browser, contexts)
            log_in(admin, follower_base, "admin", admin_key)
            admin.goto(follower_base + "/setup/join/")
            admin.locator("input[name=bundle]").set_input_files(str(bundle_path))
            admin.locator("input[name=mek]").fill(mek_text)
            admin.locator("input[name=own_address]").fill(FOLLOWER)
            admin.get_by_role("button", name="Open the bundle").click()
            status = admin.locator("#join-status")
            expect(status).to_have_attribute("data-join-state", "opened")
            admin.get_by_role("button", name="Check the way to the leader").click()
            expect(status).to_have_attribute("data-join-state", "checked", timeout=30_000)
            expect(admin.locator("#join-replaces-local")).to_contain_text(
                "its local accounts (its first administrator) and its audit trail are replaced by the cluster's")
            admin.get_by_role("button", name="Ask the leader to join").click()
            expect(status).to_have_attribute("data-join-state", "requested")

            last_step: dict[str, int] = {}  # each approver's last typed step: the next code comes after it
            for name in APPROVERS:
                page = new_page(browser, contexts)
                login_step = log_in(page, leader_base, name, keys[name])
                page.goto(leader_base + "/cluster/requests/")
                request = page.locator("article", has_text=FOLLOWER).filter(
                    has=page.get_by_role("button", name="Vote")).first
                request.get_by_label("Approve").check()
                code, last_step[name] = fresh_code(bytes.fromhex(keys[name]), login_step)
                request.locator("input[name=totp_code]").fill(code)
                request.get_by_role("button", name="Vote").click()
                expect(page.locator("body")).to_contain_text("Your vote is recorded")
            approved = time.monotonic()

            # The page follows the join until the console moves onto the cluster's database;
            # there this node's own accounts are gone, and the page goes to the login.
            try:
                expect(admin).to_have_url(re.compile(r"/account/login/\?next=/setup/join/status/"), timeout=300_000)
            except AssertionError:
                if down := stopped_node(lab.nodes):
                    raise AssertionError(down) from None
                raise
            figures["approved to the follower's page at the login s"] = time.monotonic() - approved

            # serve moves the follower's console onto the cluster's database
            wait_for(lambda: (follower.data_dir / "database.json").exists(), timeout=120, interval=1,
                     what="the follower's switch to the cluster's database")

            def console_on_cluster():
                try:
                    return https_get(follower_base + "/account/login/", timeout=5)[0] == 200 and run(
                        follower, "from django.db import connection\nconnection.ensure_connection()\n"
                                  "result = connection.vendor") == "postgresql"
                except OSError:
                    return False

            wait_for(console_on_cluster, timeout=90, interval=1, what="the follower's console on the cluster's database")
            figures["approved to console on the cluster's database s"] = time.monotonic() - approved
            moved = time.monotonic()

            # The join's own Patroni (never the synchronous standby: nosync) stopped before the
            # switch; serve starts the member again, which becomes the synchronous standby.
            def synchronous_again():
                if "starting patroni" not in follower.log("serve"):
                    return False
                members = patroni_cluster(leader, LEADER)
                return len(members) == 2 and any(m["role"] == "sync_standby" and m["state"] == "streaming"
                                                 for m in members)

            wait_for(synchronous_again, timeout=180, interval=1, what="the follower's member, under serve, "
                                                                      "streaming as the synchronous standby")
            figures["console moved to the member the synchronous standby s"] = time.monotonic() - moved

            # An approver enrolled on the leader logs on at the follower with a 6-digit code,
            # and sees the cluster as the leader does.
            visitor = new_page(browser, contexts)
            last_step[APPROVERS[0]] = log_in(visitor, follower_base, APPROVERS[0], keys[APPROVERS[0]],
                                             last_step[APPROVERS[0]])
            visitor.goto(follower_base + "/")
            expect(visitor.locator("body")).to_contain_text(f"follower of {LEADER}")
            expect(visitor.locator("body")).not_to_contain_text("No valid licence")
            visitor.goto(follower_base + "/cluster/")
            expect(visitor.locator("#database-leader")).to_contain_text("node-127-0-0-161")
            expect(visitor.locator("#database-standing")).to_contain_text(f"({LEADER})")

            # The operator on the follower's console makes a bundle for a third node: the job is
            # the cluster's, so the leader's worker makes it (signed by the cluster CA, naming
            # the leader as the node to join), and the follower's page offers the download.
            third = "127.0.0.163"
            requester = new_page(browser, contexts)
            log_in(requester, follower_base, "operator", keys["operator"], operator_step)
            asked = time.monotonic()
            third_path = bundle_made_and_downloaded(requester, follower_base, third, tmp_path)
            figures["bundle asked on the follower to downloaded s"] = time.monotonic() - asked
            opened = run(leader, f"""
from django.utils import timezone
from pathlib import Path
from pamportal.crypto import bundle, mek
from pamportal.cluster.models import JoiningBundle
b = bundle.bundle_open(Path({str(third_path)!r}).read_bytes(), mek=mek.decode({mek_text!r}), now=timezone.now())
job = JoiningBundle.objects.get(follower_address={third!r}).job
result = [b.leader_address, b.follower_address, list(job.output.values_list("text", flat=True))]
""")
            assert opened[:2] == [LEADER, third], opened
            assert any(f"this node ({FOLLOWER}) does not lead the cluster" in line for line in opened[2]), opened[2]
            assert any(f"taken by the cluster's leader ({LEADER})" in line for line in opened[2]), opened[2]
        finally:
            for context in contexts:
                context.close()
            lab.close()
    print(f"replicated follower join in the browser: {time.monotonic() - started:.1f} s; "
          + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
