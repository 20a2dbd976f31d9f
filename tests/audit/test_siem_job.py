""""Forward now" is a job: the request only queues it and goes to the job's page; a
worker sends the events, and the job's output says how it went."""

from __future__ import annotations

import pytest
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction
from pamportal.audit.jobs import SIEM_FORWARD_KIND
from pamportal.audit.models import AuditEvent, SiemCollector
from pamportal.audit.siem import siem_configure
from pamportal.jobs.choices import Status
from pamportal.jobs.engine import job_execute
from pamportal.jobs.models import Job

from .reports import make_trail
from .test_siem import SyslogReceiver, pki, wait_for  # noqa: F401  (pki is a fixture)

pytestmark = pytest.mark.django_db


def forward_now(client, django_capture_on_commit_callbacks) -> Job:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(reverse("audit:siem_forward"))
    job = Job.objects.get(kind=SIEM_FORWARD_KIND)
    assert response.status_code == 302 and response["Location"] == reverse("jobs:detail", args=[job.pk])
    assert len(callbacks) == 1  # queued for a worker once committed, not run in the request
    assert job.status == Status.PENDING
    return job


def test_forward_now_queues_a_job_that_sends_the_events(pki, as_role, django_capture_on_commit_callbacks):  # noqa: F811
    ca_pem, cert_path, key_path = pki
    receiver = SyslogReceiver(cert_path, key_path)
    try:
        make_trail(5)
        siem_configure(host="127.0.0.1", port=receiver.port, ca_pem=ca_pem, enabled=True)
        client = as_role(Role.ADMINISTRATOR)
        job = forward_now(client, django_capture_on_commit_callbacks)
        started = AuditEvent.objects.filter(action=AuditAction.JOB_STARTED, target=f"job:{job.pk}")
        assert started.count() == 1
        assert SiemCollector.objects.get().cursor == 0  # nothing sent by the request
        assert job_execute(job_id=job.pk, worker_id="w1") == Status.SUCCEEDED
        head = SiemCollector.objects.get().cursor
        assert head > 0
        wait_for(lambda: len(receiver.messages) >= head)
    finally:
        receiver.stop()
    assert receiver.positions()[:head] == list(range(1, head + 1))
    page = client.get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert f"{head} events sent; the cursor is at {head}" in page


def test_a_collector_that_is_down_fails_the_job_with_the_reason(as_role, django_capture_on_commit_callbacks):
    make_trail(3)
    siem_configure(host="127.0.0.1", port=9, ca_pem="", enabled=True)
    job = forward_now(as_role(Role.ADMINISTRATOR), django_capture_on_commit_callbacks)
    assert job_execute(job_id=job.pk, worker_id="w1") == Status.FAILED
    step = job.steps.get()
    assert "forwarding stopped after 0 events" in step.error
    assert SiemCollector.objects.get().last_error


def test_nothing_configured_is_a_warning_not_a_failure(as_role, django_capture_on_commit_callbacks):
    job = forward_now(as_role(Role.ADMINISTRATOR), django_capture_on_commit_callbacks)
    assert job_execute(job_id=job.pk, worker_id="w1") == Status.SUCCEEDED
    assert job.output.filter(text="nothing sent: not configured", level="warning").exists()


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.AUDITOR])
def test_only_administrators_may_forward_and_nobody_else_sees_a_job_started(as_role, role):
    assert as_role(role).post(reverse("audit:siem_forward")).status_code == 403
    assert not Job.objects.filter(kind=SIEM_FORWARD_KIND).exists()
