"""The audit report pages: who may see, export and configure; exports through the
pages (written at once, or by a job with progress); the PDF a person reads."""

from __future__ import annotations

import json
import re
import subprocess
import uuid

import pytest
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit import conf
from pamportal.audit.checkpoints import audit_checkpoint_periodic
from pamportal.audit.models import AuditCheckpoint, AuditExport, SiemCollector
from pamportal.jobs.engine import job_execute

from .reports import export_to, make_trail

pytestmark = pytest.mark.django_db

ROLES = [None, Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.AUDITOR, Role.ADMINISTRATOR]
READERS = {Role.AUDITOR, Role.ADMINISTRATOR}
ADMINS = {Role.ADMINISTRATOR}


@pytest.fixture
def ready_export(db, tmp_path):
    make_trail(3)
    export_to(tmp_path, fmt="csv")
    return AuditExport.objects.get()


def expected(role, allowed, ok):
    return 302 if role is None else ok if role in allowed else 403


CASES = [
    ("audit:list", "GET", None, READERS, 200),
    ("audit:export", "POST", None, READERS, 302),
    ("audit:export", "GET", None, READERS, 405),
    ("audit:export_detail", "GET", "export", READERS, 200),
    ("audit:export_file", "GET", "export", READERS, 200),
    ("audit:export_manifest", "GET", "export", READERS, 200),
    ("audit:checkpoint", "POST", None, ADMINS, 302),
    ("audit:siem", "GET", None, READERS, 200),
    ("audit:siem", "POST", None, ADMINS, 200),
    ("audit:siem_forward", "POST", None, ADMINS, 302),
]


@pytest.mark.parametrize("name,method,kwargs,allowed,ok", CASES)
@pytest.mark.parametrize("role", ROLES)
def test_role_matrix(client, make_user, login_client, admin_user, ready_export, name, method, kwargs, allowed, ok, role):
    if role is not None:
        login_client(make_user(f"someone-{role}", role))
    url = reverse(name, kwargs={"export_id": ready_export.pk} if kwargs else None)
    response = client.generic(method, url, "format=csv" if name == "audit:export" else "",
                              content_type="application/x-www-form-urlencoded")
    want = expected(role, allowed, ok)
    if ok == 405:  # the method is checked first: a GET on an action changes nothing for anyone
        want = 405
    elif method != "GET" and role is not None and role not in READERS:
        want = 403
    assert response.status_code == want, f"{method} {url} as {role}"


def test_auditor_changes_nothing(client, make_user, login_client, admin_user, ready_export):
    login_client(make_user("audrey", Role.AUDITOR))
    before = (AuditCheckpoint.objects.count(), SiemCollector.objects.count())
    assert client.post(reverse("audit:checkpoint")).status_code == 403
    assert client.post(reverse("audit:siem"), {"host": "x", "port": 6514, "ca_pem": "", "enabled": "on"}).status_code == 403
    assert client.post(reverse("audit:siem_forward")).status_code == 403
    assert (AuditCheckpoint.objects.count(), SiemCollector.objects.count()) == before
    html = client.get(reverse("audit:siem")).content.decode()
    assert "Cursor" in html and 'action="/audit/siem/"' not in html and "Forward now" not in html


def test_list_shows_badge_key_and_export_form(admin_user, login_client):
    make_trail(4)
    audit_checkpoint_periodic()
    client = login_client(admin_user)
    html = client.get(reverse("audit:list")).content.decode()
    assert "Chain verified" in html and "up to event 4" in html
    key = AuditCheckpoint.objects.get().key_id
    assert key in html and "BEGIN PUBLIC KEY" in html
    assert reverse("audit:export") in html


def test_small_export_through_the_page_with_filters(admin_user, login_client, tmp_path):
    make_trail(12)
    client = login_client(admin_user)
    response = client.post(reverse("audit:export"), {"format": "jsonl", "outcome": "denied", "target": "#1"})
    export = AuditExport.objects.get()
    assert response["Location"] == reverse("audit:export_detail", args=[export.pk])
    assert export.is_ready and export.job is None and export.filters == {"outcome": "denied", "target": "#1"}
    body = b"".join(client.get(reverse("audit:export_file", args=[export.pk])).streaming_content)
    rows = [json.loads(line) for line in body.splitlines()]
    assert rows and all(r["outcome"] == "denied" and "#1" in r["target"] for r in rows)
    manifest = json.loads(client.get(reverse("audit:export_manifest", args=[export.pk])).content)
    assert manifest["count"] == len(rows) and manifest["contiguous"] is False
    page = client.get(reverse("audit:export_detail", args=[export.pk])).content.decode()
    assert manifest["export"]["sha256"] in page


def test_large_export_runs_as_a_job_with_progress(admin_user, login_client, settings, tmp_path):
    settings.PAM_AUDIT_EXPORT_INLINE_MAX = 5
    make_trail(12)
    client = login_client(admin_user)
    client.post(reverse("audit:export"), {"format": "csv"})
    export = AuditExport.objects.get()
    assert export.job is not None and export.state == AuditExport.State.PENDING
    page = client.get(reverse("audit:export_detail", args=[export.pk])).content.decode()
    assert f'id="job-{export.job.pk}-progress"' in page
    assert client.get(reverse("audit:export_file", args=[export.pk])).status_code == 404
    assert job_execute(job_id=export.job.pk, worker_id="test") == "succeeded"
    export.refresh_from_db()
    assert export.is_ready and export.row_count == 12
    assert (conf.export_dir() / export.file_name).stat().st_mode & 0o777 == 0o600


def test_missing_export_is_404(admin_user, login_client):
    client = login_client(admin_user)
    assert client.get(reverse("audit:export_detail", args=[uuid.uuid4()])).status_code == 404


def test_siem_settings_refuse_a_bad_certificate(admin_user, login_client):
    client = login_client(admin_user)
    response = client.post(reverse("audit:siem"), {"host": "collector.example", "port": 6514, "ca_pem": "nope"})
    assert response.status_code == 200 and "This is not a PEM certificate." in response.content.decode()
    assert not SiemCollector.objects.exists()


def test_pdf_report_has_the_digest_counts_and_verification(tmp_path, admin_user):
    make_trail(9)
    audit_checkpoint_periodic()
    from pamportal.audit.exports import audit_export_create

    export = audit_export_create(user=admin_user, format="pdf", filters={"actor": "alice"})
    assert export.job is not None
    assert job_execute(job_id=export.job.pk, worker_id="test") == "succeeded"
    export.refresh_from_db()
    manifest = json.loads(export.manifest)
    pdf_path = conf.export_dir() / export.file_name
    assert pdf_path.read_bytes().startswith(b"%PDF")
    text = subprocess.run(["pdftotext", "-layout", str(pdf_path), "-"], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    digest = manifest["events_sha256"]
    pages = text.count("\f") or 1
    assert text.count(digest) >= pages  # in every page's footer
    assert "Counts by outcome" in text and re.search(r"Denied\s+6\b", text) and re.search(r"Succeeded\s+3\b", text)
    assert re.search(r"Login failed\s+auth\.login_failed\s+6\b", text)
    assert "Approvals and votes" in text and "No approval requests or votes" in text
    assert "Chain verified" in text
    # and it verifies offline like the others (signature and digest)
    manifest_path = tmp_path / "m.json"
    manifest_path.write_text(export.manifest)
    from pamportal.audit import offline

    assert offline.verify(str(pdf_path), str(manifest_path)).ok
    pdf_path.write_bytes(pdf_path.read_bytes().replace(b"%PDF-1.7", b"%PDF-1.6", 1) + b" ")
    report = offline.verify(str(pdf_path), str(manifest_path))
    assert not report.ok and "SHA-256" in report.problem
