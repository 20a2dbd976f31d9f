"""A refused run-again or cancel (a role without jobs.run, or a job whose state does not
allow it) is an audit event naming the job, the outcome and the reason."""

from __future__ import annotations

import pytest
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.jobs.choices import Status
from pamportal.jobs.engine import IllegalTransition, job_execute, step_claim
from pamportal.jobs.models import Job
from pamportal.jobs.services import job_cancel, job_create, job_rerun
from tests.jobs import kinds
from tests.jobs.kinds import failed_job
from tests.support.audit import events

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("role", [Role.VIEWER, Role.APPROVER, Role.AUDITOR])
def test_a_role_without_jobs_run_is_refused_and_audited(as_role, role):
    failed = failed_job()
    pending = job_create(kind=kinds.PLAIN.name, enqueue=False)
    client = as_role(role)

    response = client.post(reverse("jobs:rerun", args=[failed.pk]))
    assert response.status_code == 403
    (event,) = events(AuditAction.JOB_RERUN, Outcome.DENIED)
    assert event.target == f"job:{failed.pk}" and event.actor_name == f"u-{role}"
    assert event.data["reason"] == f"role {role.value} lacks the capability jobs.run"

    response = client.post(reverse("jobs:cancel", args=[pending.pk]))
    assert response.status_code == 403
    (event,) = events(AuditAction.JOB_CANCELLED, Outcome.DENIED)
    assert event.target == f"job:{pending.pk}" and "jobs.run" in event.data["reason"]

    assert Job.objects.get(pk=failed.pk).status == Status.FAILED
    assert Job.objects.get(pk=pending.pk).status == Status.PENDING
    assert not events(AuditAction.JOB_RERUN, Outcome.SUCCEEDED)
    assert not events(AuditAction.JOB_CANCELLED, Outcome.SUCCEEDED)


def test_run_again_in_an_illegal_state_is_audited_with_the_reason(as_role):
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    job_execute(job_id=job.pk, worker_id="w")
    client = as_role(Role.OPERATOR)
    response = client.post(reverse("jobs:rerun", args=[job.pk]), follow=True)
    assert response.status_code == 200 and "cannot be run again" in response.content.decode()
    (event,) = events(AuditAction.JOB_RERUN)
    assert event.outcome == Outcome.FAILED and event.target == f"job:{job.pk}"
    assert event.actor_name == "u-operator"
    assert "cannot move from succeeded to pending" in event.data["reason"]
    assert Job.objects.get(pk=job.pk).status == Status.SUCCEEDED


def test_cancel_in_an_illegal_state_is_audited_with_the_reason(as_role):
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    job_execute(job_id=job.pk, worker_id="w")
    client = as_role(Role.ADMINISTRATOR)
    response = client.post(reverse("jobs:cancel", args=[job.pk]), follow=True)
    assert "cannot be cancelled" in response.content.decode()
    (event,) = events(AuditAction.JOB_CANCELLED)
    assert event.outcome == Outcome.FAILED and event.target == f"job:{job.pk}"
    assert "only a pending or running job can be cancelled" in event.data["reason"]


def test_the_services_record_their_refusals_and_keep_nothing_else(admin_user):
    running = job_create(kind=kinds.PLAIN.name, enqueue=False)
    step_claim(running.pk, "w")
    with pytest.raises(IllegalTransition):
        job_rerun(job_id=running.pk, user=None)
    (event,) = events(AuditAction.JOB_RERUN)
    assert event.outcome == Outcome.FAILED and "only a failed or cancelled job" in event.data["reason"]
    assert Job.objects.get(pk=running.pk).runs == 1
    job_cancel(job_id=running.pk, user=None)
    with pytest.raises(IllegalTransition):
        job_cancel(job_id=running.pk, user=None)
    refused = events(AuditAction.JOB_CANCELLED, Outcome.FAILED)
    assert len(refused) == 1 and refused[0].target == f"job:{running.pk}"
