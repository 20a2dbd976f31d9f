"""The scheduled backup's decision: a job only on a finalised node that leads, none while
one is under way or within the interval, exactly one when due; acting as the system.
(The beat's timing is Celery's; what is tested is what the task decides each time.)"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction
from pamportal.audit.models import AuditEvent
from pamportal.backups.jobs import KIND
from pamportal.backups.models import Backup, BackupState
from pamportal.backups.services import SCHEDULED_TITLE, backup_schedule_blocker, backup_scheduled_start, backup_start
from pamportal.backups.tasks import scheduled_backup
from pamportal.jobs.choices import Status
from pamportal.jobs.models import Job
from pamportal.nodes.models import Node, NodeRole
from pamportal.setup.wizard import setup_finalise
from tests.setup.helpers import through_mek

DAY = 86400


@pytest.fixture
def admin(data_dir, make_user, settings):
    settings.PAM_BACKUP_INTERVAL_SECONDS = DAY
    user = make_user("sched-admin", Role.ADMINISTRATOR)
    through_mek(user)
    return user


@pytest.fixture
def finalised(admin):
    setup_finalise(user=admin)
    return admin


def backup_jobs() -> list[Job]:
    return list(Job.objects.filter(kind=KIND).order_by("pk"))


def test_due_on_a_finalised_leader_starts_one_job_as_the_system(finalised):
    assert backup_schedule_blocker() == ""
    job_id = scheduled_backup()
    (job,) = backup_jobs()
    assert job.pk == job_id and job.created_by is None and job.title == SCHEDULED_TITLE
    assert job.status == Status.PENDING
    (event,) = AuditEvent.objects.filter(action=AuditAction.JOB_STARTED, target=f"job:{job.pk}")
    assert event.actor_id is None and event.actor_name == "backup schedule"
    assert json.loads(event.details)["kind"] == KIND


def test_not_finalised_no_job(admin):
    assert "not finalised" in backup_schedule_blocker()
    assert scheduled_backup() is None
    assert backup_jobs() == []


def test_a_follower_takes_no_backup(finalised):
    Node.objects.update(role=NodeRole.FOLLOWER)  # the leader of its replicated cluster is another node
    assert "does not lead" in backup_schedule_blocker()
    assert scheduled_backup() is None
    assert backup_jobs() == []
    Node.objects.update(role=NodeRole.LEADER)
    assert scheduled_backup() is not None


def test_none_while_one_is_under_way_even_past_the_interval(finalised):
    running = backup_start(user=finalised)
    later = timezone.now() + timedelta(seconds=DAY + 60)
    assert f"job #{running.pk}" in backup_schedule_blocker(now=later)
    assert backup_scheduled_start(now=later) is None
    Job.objects.filter(pk=running.pk).update(status=Status.RUNNING)
    assert backup_scheduled_start(now=later) is None
    assert backup_jobs() == [running]


def test_once_per_interval(finalised):
    first = scheduled_backup()
    Job.objects.filter(pk=first).update(status=Status.SUCCEEDED)
    # The next tick of the beat, and any before the interval is over: nothing.
    assert scheduled_backup() is None
    almost = timezone.now() + timedelta(seconds=DAY - 60)
    assert "next is due" in backup_schedule_blocker(now=almost)
    assert backup_scheduled_start(now=almost) is None
    # Past the interval: one more (a failed last backup does not make it come sooner or later).
    Job.objects.filter(pk=first).update(status=Status.FAILED)
    later = timezone.now() + timedelta(seconds=DAY + 1)
    second = backup_scheduled_start(now=later)
    assert second is not None and [j.pk for j in backup_jobs()] == [first, second.pk]


def test_a_backup_taken_by_hand_counts(finalised):
    # ``manage.py backup`` leaves a Backup row and no job: the schedule waits a full interval from it.
    Backup.objects.create(state=BackupState.PROVEN, started_at=timezone.now() - timedelta(hours=1))
    assert "last backup started" in backup_schedule_blocker()
    assert backup_scheduled_start(now=timezone.now() + timedelta(seconds=DAY - 2 * 3600)) is None
    assert backup_scheduled_start(now=timezone.now() + timedelta(seconds=DAY)) is not None


def test_an_interval_of_zero_switches_the_schedule_off(finalised, settings):
    settings.PAM_BACKUP_INTERVAL_SECONDS = 0
    assert "off" in backup_schedule_blocker()
    assert scheduled_backup() is None
    assert backup_jobs() == []
