"""The Backups page through real URLs as each role: the list, "Start a backup", the
download of a proven archive (administrators, audited), the refusals, CSRF, and the
htmx poll that stops once no backup is under way."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.models import AuditEvent
from pamportal.backups import conf
from pamportal.backups.jobs import KIND
from pamportal.backups.models import Backup, BackupState
from pamportal.backups.services import backup_start
from pamportal.jobs.choices import Status
from pamportal.jobs.models import Job
from pamportal.jobs.services import job_create
from pamportal.nodes.selectors import node_address
from pamportal.setup.wizard import setup_finalise
from tests.setup.helpers import through_mek

PAGE = "/backups/"
START = "/backups/start/"


def download_url(backup: Backup) -> str:
    return f"/backups/{backup.pk}/download/"


@pytest.fixture
def admin(data_dir, make_user):
    """The administrator of a finalised node (its own data dir, so its backup dir)."""
    user = make_user("bk-admin", Role.ADMINISTRATOR)
    through_mek(user)
    setup_finalise(user=user)
    return user


@pytest.fixture
def operator(admin, make_user):
    return make_user("bk-operator", Role.OPERATOR)


def recorded(state=BackupState.PROVEN, *, content: bytes = b"", job=None, **fields) -> Backup:
    """A backup as the backup service leaves it (the row, and for a proven one its archive
    in the backup dir). Written directly: a real backup dumps the database it runs on,
    which this process must not do to the test database (tests/backups/conftest.py takes
    real backups in node processes of their own)."""
    started = timezone.now() - timedelta(minutes=5)
    name = fields.pop("archive_name", f"pamportal-backup-test-{Backup.objects.count() + 1}.pambak")
    content = content or name.encode() * 100
    if state == BackupState.PROVEN:
        (conf.backup_dir() / name).write_bytes(content)
    values = {
        "node_address": node_address(), "archive_name": name, "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(), "cluster_id": "c-test", "database_engine": "sqlite",
        "audit_position": 42, "audit_hash": "ab" * 32, "started_at": started, "written_at": started,
        "finished_at": started + timedelta(seconds=3), "write_seconds": 1.25, "proof_seconds": 1.5,
        "proof_ok": state == BackupState.PROVEN, "proof_details": {"verified_events": 42},
        "job_id": job.pk if job is not None else None, "created_by_name": "bk-admin",
        "failure_reason": "The archive was not written: disk full" if state == BackupState.FAILED else "",
        **fields,
    }
    return Backup.objects.create(state=state, **values)


def events(action) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("position"))


def details(event: AuditEvent) -> dict:
    return json.loads(event.details)


# --- who sees what ----------------------------------------------------------------------------
@pytest.mark.parametrize("role", [Role.VIEWER, Role.AUDITOR, Role.APPROVER])
def test_roles_without_backups_are_refused_the_page_and_the_actions(role, admin, make_user, login_client, client):
    backup = recorded()
    login_client(make_user(f"bk-{role}", role))
    assert client.get(PAGE).status_code == 403
    assert client.post(START).status_code == 403
    assert client.post(download_url(backup)).status_code == 403
    assert not Job.objects.filter(kind=KIND).exists()
    assert events(AuditAction.BACKUP_DOWNLOADED) == []
    assert [e.target for e in events(AuditAction.ACCESS_DENIED)] == [PAGE, START, download_url(backup)]
    assert 'href="/backups/"' not in client.get("/").content.decode()  # no link to a page they cannot open


def test_the_operator_sees_the_backups_and_may_start_one_but_not_download(operator, login_client, client):
    proven = recorded(archive_name="pamportal-backup-c-test-20261207T010000Z.pambak")
    failed = recorded(BackupState.FAILED, archive_name="", size=None, sha256="", audit_position=None,
                      started_at=timezone.now() - timedelta(minutes=1))
    login_client(operator)
    response = client.get(PAGE)
    assert response.status_code == 200
    page = response.content.decode()
    assert 'href="/backups/"' in page  # the nav link
    assert proven.archive_name in page and proven.sha256 in page and "event 42" in page
    assert "42 audit events verified" in page and "written in 1.25 s" in page and "proven in 1.50 s" in page
    assert "disk full" in page and f'id="backup-{failed.pk}"' in page
    assert "useless" in page and "manage.py restore" in page  # what a backup is, and how to restore it
    assert "free of" in page  # the backup dir's free space
    assert "Start a backup" in page and "Download" not in page
    # Newest first.
    assert page.index(f'id="backup-{failed.pk}"') < page.index(f'id="backup-{proven.pk}"')

    response = client.post(START)
    assert response.status_code == 302 and response["Location"] == PAGE
    job = Job.objects.get(kind=KIND)
    assert job.created_by == operator and job.status == Status.PENDING
    (started,) = [e for e in events(AuditAction.JOB_STARTED) if e.target == f"job:{job.pk}"]
    assert started.actor_name == operator.username and details(started)["kind"] == KIND

    assert client.post(download_url(proven)).status_code == 403
    assert events(AuditAction.BACKUP_DOWNLOADED) == []


def test_the_administrator_downloads_the_archive_byte_for_byte_and_it_is_audited(admin, login_client, client):
    content = bytes(range(256)) * 4000  # more than one block of the streamed response
    backup = recorded(content=content)
    login_client(admin)
    assert f'action="{download_url(backup)}"' in client.get(PAGE).content.decode()
    response = client.post(download_url(backup))
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="{backup.archive_name}"'
    assert response["Content-Type"] == "application/octet-stream"
    assert b"".join(response.streaming_content) == content == (conf.backup_dir() / backup.archive_name).read_bytes()
    (event,) = events(AuditAction.BACKUP_DOWNLOADED)
    assert event.actor_name == admin.username and event.outcome == Outcome.SUCCEEDED
    assert event.target == f"backup:{backup.archive_name}"
    assert details(event) == {"archive": backup.archive_name, "size": len(content), "sha256": backup.sha256}


# --- refusals -------------------------------------------------------------------------------
def _failed(**kw):
    return recorded(BackupState.FAILED, **kw)


def _running(**kw):
    return recorded(BackupState.RUNNING, proof_ok=None, finished_at=None, **kw)


def _pruned(**kw):
    backup = recorded(pruned_at=timezone.now(), **kw)
    (conf.backup_dir() / backup.archive_name).unlink()
    return backup


def _gone(**kw):
    backup = recorded(**kw)
    (conf.backup_dir() / backup.archive_name).unlink()
    return backup


def _changed(**kw):
    backup = recorded(**kw)
    with open(conf.backup_dir() / backup.archive_name, "ab") as handle:
        handle.write(b"appended")
    return backup


def _elsewhere(**kw):
    return recorded(node_address="node2.example.com", **kw)


@pytest.mark.parametrize("make,reason,says", [
    (_failed, "backup failed", "not proven"),
    (_running, "backup running", "not proven"),
    (_pruned, "archive pruned", "removed by retention"),
    (_gone, "archive file missing", "no longer in"),
    (_changed, "archive size differs", "changed on disk"),
    (_elsewhere, "archive on another node", "written on node2.example.com"),
], ids=["failed", "running", "pruned", "file-gone", "file-changed", "other-node"])
def test_a_backup_that_cannot_be_handed_out_is_refused_with_a_message_and_audited(make, reason, says, admin,
                                                                                   login_client, client):
    backup = make()
    login_client(admin)
    response = client.post(download_url(backup), follow=True)
    assert response.redirect_chain == [(PAGE, 302)]
    assert says in response.content.decode()
    assert events(AuditAction.BACKUP_DOWNLOADED) == []
    (event,) = events(AuditAction.BACKUP_REFUSED)
    assert event.outcome == Outcome.DENIED and event.actor_name == admin.username
    assert event.target == f"backup:{backup.archive_name}" and details(event)["reason"] == reason


def test_a_failed_backup_offers_no_download_button(admin, login_client, client):
    backup = _failed()
    login_client(admin)
    assert f'action="{download_url(backup)}"' not in client.get(PAGE).content.decode()


def test_a_missing_backup_is_not_found(admin, login_client, client):
    login_client(admin)
    assert client.post("/backups/999999/download/").status_code == 404


def test_a_second_backup_is_refused_while_one_is_under_way(operator, login_client, client):
    login_client(operator)
    client.post(START)
    response = client.post(START, follow=True)
    assert "already under way" in response.content.decode()
    assert Job.objects.filter(kind=KIND).count() == 1
    (event,) = events(AuditAction.BACKUP_REFUSED)
    assert event.outcome == Outcome.DENIED and details(event)["reason"] == "a backup is already under way"


def test_no_backup_before_setup_is_finalised(data_dir, admin_user, make_user, login_client, client):
    login_client(make_user("early-operator", Role.OPERATOR))  # the administrator exists; setup is under way
    response = client.post(START, follow=True)
    assert "not finalised" in response.content.decode()
    assert not Job.objects.filter(kind=KIND).exists()
    assert details(events(AuditAction.BACKUP_REFUSED)[0])["reason"] == "node not finalised"


# --- CSRF -----------------------------------------------------------------------------------
def test_the_forms_need_their_csrf_token(admin, login_client):
    backup = recorded()
    client = login_client(admin, Client(enforce_csrf_checks=True))
    assert client.post(START).status_code == 403
    assert client.post(download_url(backup)).status_code == 403
    assert not Job.objects.filter(kind=KIND).exists()
    assert events(AuditAction.BACKUP_DOWNLOADED) == []
    # With the token the page's forms carry, both go through.
    client.get(PAGE)
    token = client.cookies[django_settings.CSRF_COOKIE_NAME].value
    assert client.post(download_url(backup), {"csrfmiddlewaretoken": token}).status_code == 200
    assert client.post(START, {"csrfmiddlewaretoken": token}).status_code == 302
    assert Job.objects.filter(kind=KIND).count() == 1


# --- live updates ---------------------------------------------------------------------------
def test_the_table_polls_while_a_backup_runs_and_stops_when_it_is_over(admin, login_client, client):
    recorded()
    login_client(admin)
    poll = {"HTTP_HX_REQUEST": "true"}
    idle = client.get(PAGE, **poll)
    assert idle.status_code == 286  # nothing under way: htmx stops polling
    assert "hx-get" not in idle.content.decode() and "<html" not in idle.content.decode()
    assert "hx-get" not in client.get(PAGE).content.decode()

    job = backup_start(user=admin)
    page = client.get(PAGE).content.decode()
    assert 'hx-trigger="load delay:500ms, every 2s"' in page and "disabled" in page
    busy = client.get(PAGE, **poll)
    assert busy.status_code == 200
    assert 'hx-trigger="every 2s"' in busy.content.decode() and "<html" not in busy.content.decode()

    Job.objects.filter(pk=job.pk).update(status=Status.SUCCEEDED)
    recorded(job=job)
    done = client.get(PAGE, **poll)
    assert done.status_code == 286
    assert "hx-get" not in done.content.decode() and f"#{job.pk}" in done.content.decode()


def test_the_page_makes_the_same_queries_for_3_or_30_backups(admin, login_client, client,
                                                           django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    login_client(admin)
    for _ in range(3):
        recorded(job=job_create(kind=KIND, created_by=admin, enqueue=False))
    client.get(PAGE)  # warm: the session write of the login
    with CaptureQueriesContext(connection) as few:
        assert client.get(PAGE).status_code == 200
    for _ in range(27):
        recorded(job=job_create(kind=KIND, created_by=admin, enqueue=False))
    with django_assert_max_num_queries(len(few.captured_queries)):
        page = client.get(PAGE).content.decode()
    assert page.count('class="status status-succeeded"') == 30
