"""The PDF report as a reader sees it (pdftotext -layout): the events table fits A4 with
every column whole, and "Approvals and votes" lists a real join request, its votes
and its approval. The node is named by the address set in the setup wizard."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from django.db import transaction

from pamportal.audit import conf
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.exports import audit_export_create
from pamportal.audit.models import AuditEvent
from pamportal.audit.services import audit_record
from pamportal.core.context import acting
from pamportal.jobs.engine import job_execute
from tests.cluster.conftest import (  # noqa: F401 (fixtures)
    _fresh_totp_offsets,
    approvers,
    code_for,
    fake_etcd,
    join_request_made,
    leader,
    operator,
)

pytestmark = pytest.mark.django_db
HEADERS = ["#", "Time (UTC)", "Actor", "Action", "Target", "Outcome"]


@pytest.fixture(autouse=True)
def cluster_settings(settings):
    settings.PAM_TLS_CERT = settings.PAM_DATA_DIR / "tls" / "node.crt"
    settings.PAM_TLS_KEY = settings.PAM_DATA_DIR / "tls" / "node.key"
    settings.PAM_JOIN_WAIT_SECONDS = 0.5
    settings.PAM_JOIN_POLL_INTERVAL = 0.01
    settings.PAM_NODE_ADDRESS = "localhost"  # what the node started with; the wizard sets another


def pdf_text(user, filters: dict | None = None) -> tuple[str, dict]:
    export = audit_export_create(user=user, format="pdf", filters=filters or {})
    assert job_execute(job_id=export.job.pk, worker_id="test") == "succeeded"
    export.refresh_from_db()
    path = conf.export_dir() / export.file_name
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    return text, json.loads(export.manifest)


def test_events_table_fits_the_page_with_every_column_whole(admin_user):
    # The longest action labels and outcomes, long targets with and without spaces.
    long_actions = [AuditAction.CLUSTER_JOIN_HANDED_OVER, AuditAction.CLUSTER_JOIN_PROMOTED,
                    AuditAction.MEK_DOWNLOAD_REFUSED, AuditAction.LOGIN_FAILED]
    with acting(actor_id=7, actor_name="operator-with-a-long-name", source_ip="192.0.2.7", request_id="r"):
        for n in range(60):
            with transaction.atomic():
                audit_record(action=long_actions[n % 4], outcome=[Outcome.SUCCEEDED, Outcome.DENIED, Outcome.FAILED][n % 3],
                             target=f"t{n}" if n % 5 else f"join-request:{'ab12' * 16}-{n}", details={"n": n})
    text, manifest = pdf_text(admin_user)
    rows = table_rows(text)
    listed = list(AuditEvent.objects.filter(position__lte=manifest["upto_position"]).order_by("position"))
    assert sorted(rows) == [e.position for e in listed]  # every event, on pages whose header is whole
    assert len({page for page, _ in rows.values()}) >= 2
    squash = lambda value: re.sub(r"\s+", "", value)  # noqa: E731 (a wrapped value, read down its column)
    for event in listed:
        _, cells = rows[event.position]
        assert cells["Time (UTC)"] == f"{event.time:%Y-%m-%d %H:%M:%S}"
        assert squash(cells["Actor"]) == squash(event.actor_name)
        assert squash(cells["Action"]) == squash(event.get_action_display())
        assert squash(cells["Target"]) == squash(event.target)
        assert cells["Outcome"] == event.get_outcome_display()  # not cut off at the right edge


def table_rows(text: str, headers: list[str] = HEADERS) -> dict[int, tuple[int, dict[str, str]]]:
    """The events table read off pdftotext -layout: position -> (page, cells), each
    cell the lines of its column joined; a piece of text is in the column whose header
    starts nearest to it."""
    rows: dict[int, tuple[int, dict[str, str]]] = {}
    for number, page in enumerate(text.split("\f"), 1):
        lines = page.splitlines()
        pattern = r"\s+".join(re.escape(h) for h in headers) + r"\s*$"
        header = next((i for i, line in enumerate(lines) if re.search(pattern, line)), None)
        if header is None:
            continue
        starts = [lines[header].index(h) for h in headers]
        current = None
        for line in lines[header + 1:]:
            if not line.strip():
                break
            cells = [""] * len(headers)
            for piece in re.finditer(r"\S+(?: \S+)*", line):  # columns are 2+ spaces apart
                # pdftotext places a column's text within a few characters of its
                # header, to either side (it depends on the widths of the glyphs).
                column = min(range(len(starts)), key=lambda i: abs(starts[i] - piece.start()))
                cells[column] = (cells[column] + " " + piece.group()).strip()
            if re.fullmatch(r"\d+", cells[0]):
                current = {h: c for h, c in zip(headers, cells)}
                rows[int(cells[0])] = (number, current)
            else:
                assert current is not None and cells[0] == "", line
                for h, c in zip(headers, cells):
                    current[h] = (current[h] + " " + c).strip() if c else current[h]
    return rows


def test_approvals_and_votes_lists_a_real_join_request(leader, operator, approvers, client, settings):
    from pamportal.cluster.models import RequestState
    from pamportal.cluster.requests import join_request_vote

    request, _ = join_request_made(client, operator, leader["mek"])
    for approver in approvers[:2]:  # as the vote page does: the request's user acts
        with acting(actor_id=approver.pk, actor_name=approver.username, source_ip="192.0.2.20", request_id="vote"):
            join_request_vote(request_id=request.pk, user=approver, decision="approve",
                                       totp_code=code_for(approver))
    request.refresh_from_db()
    assert request.state == RequestState.APPROVED
    text, manifest = pdf_text(leader["admin"])
    assert "No approval requests or votes" not in text
    rows = [cells for _, cells in table_rows(text, ["#", "Time (UTC)", "Who", "What", "Request", "Outcome"]).values()]
    target = f"join-request:{request.public_id}"
    about = [(cells["Who"], re.sub(r"\s+", " ", cells["What"]), cells["Outcome"]) for cells in rows
             if re.sub(r"\s+", "", cells["Request"]) == target]
    assert about == [
        ("anonymous", "Join requested", "Succeeded"),  # the follower, through the cluster setup API
        ("approver1", "Vote on a cluster request approve; 1 of 2 approvals", "Succeeded"),
        ("approver2", "Vote on a cluster request approve; 2 of 2 approvals", "Succeeded"),
        ("approver2", "Cluster request approved approved by approver1, approver2", "Succeeded"),
    ]
    # The node is the address the wizard set, not what the process started with.
    assert re.search(r"Node\s+node1\.example\.com", text) and manifest["node"] == "node1.example.com"
