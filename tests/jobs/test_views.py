"""Job pages: live progress (200 while running, 286 once over) and who may do what."""

from __future__ import annotations

import pytest
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.jobs.choices import Status
from pamportal.jobs.engine import job_execute, step_claim
from pamportal.jobs.models import Job
from pamportal.jobs.services import job_create
from tests.jobs import kinds
from tests.jobs.kinds import failed_job

pytestmark = pytest.mark.django_db


def test_progress_answers_200_and_keeps_polling_while_the_job_runs(as_role):
    client = as_role(Role.VIEWER)
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    step_claim(job.pk, "w1")
    response = client.get(reverse("jobs:progress", args=[job.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    body = response.content.decode()
    assert f'hx-get="{reverse("jobs:progress", args=[job.pk])}"' in body
    assert body.strip().startswith("<section") and body.strip().endswith("</section>")  # one element to swap
    assert 'hx-trigger="every 2s"' in body and 'hx-swap="outerHTML"' in body  # no second "load" poll
    assert '<progress value="0" max="2"' in body
    assert "status status-running" in body
    page = client.get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert 'hx-trigger="load delay:500ms, every 2s"' in page and 'hx-swap="outerHTML"' in page


def test_progress_answers_286_without_polling_attributes_once_terminal(as_role):
    client = as_role(Role.VIEWER)
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    job_execute(job_id=job.pk, worker_id="w1")
    response = client.get(reverse("jobs:progress", args=[job.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 286
    body = response.content.decode()
    assert "hx-get" not in body and "hx-trigger" not in body  # the swapped-in final state stays still
    assert '<progress value="2" max="2"' in body
    assert "one ran" in body and "two ran" in body and "job succeeded" in body
    assert "HX-Refresh" not in response


def test_progress_embedded_in_the_dashboard_asks_for_a_refresh_when_done(as_role):
    client = as_role(Role.VIEWER)
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    job_execute(job_id=job.pk, worker_id="w1")
    response = client.get(reverse("jobs:progress", args=[job.pk]) + "?refresh=1", HTTP_HX_REQUEST="true")
    assert response.status_code == 286 and response["HX-Refresh"] == "true"


def test_detail_page_shows_steps_output_and_run_again_for_failed_jobs(as_role):
    job = failed_job()
    client = as_role(Role.OPERATOR)
    body = client.get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "stopped renewing its lease" in body
    assert "status status-failed" in body and "status status-skipped" in body
    assert f'action="{reverse("jobs:rerun", args=[job.pk])}"' in body and "Run again" in body
    assert "hx-get" not in body
    viewer_body = as_role(Role.VIEWER).get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "Run again" not in viewer_body


def test_list_shows_jobs(as_role):
    job = job_create(kind=kinds.PLAIN.name, enqueue=False, title="A listed job")
    body = as_role(Role.VIEWER).get(reverse("jobs:list")).content.decode()
    assert "A listed job" in body and reverse("jobs:detail", args=[job.pk]) in body


def test_unknown_job_is_404(as_role):
    client = as_role(Role.VIEWER)
    assert client.get(reverse("jobs:detail", args=[999999])).status_code == 404
    assert client.get(reverse("jobs:progress", args=[999999])).status_code == 404


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.ADMINISTRATOR])
def test_every_role_may_view_jobs(as_role, role):
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    client = as_role(role)
    for url in [reverse("jobs:list"), reverse("jobs:detail", args=[job.pk]), reverse("jobs:progress", args=[job.pk])]:
        assert client.get(url).status_code == 200, url


@pytest.mark.parametrize("role", [Role.VIEWER, Role.APPROVER])
def test_roles_without_jobs_run_are_refused_rerun_and_cancel(as_role, role):
    job = failed_job()
    running = job_create(kind=kinds.PLAIN.name, enqueue=False)
    client = as_role(role)
    assert client.post(reverse("jobs:rerun", args=[job.pk])).status_code == 403
    assert client.post(reverse("jobs:cancel", args=[running.pk])).status_code == 403
    assert Job.objects.get(pk=job.pk).status == Status.FAILED
    assert Job.objects.get(pk=running.pk).status == Status.PENDING


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.ADMINISTRATOR])
def test_operators_and_administrators_may_run_again_and_cancel(as_role, role, django_capture_on_commit_callbacks):
    job = failed_job()
    client = as_role(role)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(reverse("jobs:rerun", args=[job.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("jobs:detail", args=[job.pk])
    assert len(callbacks) == 1
    job.refresh_from_db()
    assert job.status == Status.PENDING and job.runs == 2
    response = client.post(reverse("jobs:cancel", args=[job.pk]))
    assert response.status_code == 302
    assert Job.objects.get(pk=job.pk).status == Status.CANCELLED


def test_run_again_of_a_succeeded_job_is_a_message_not_an_error(as_role):
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    job_execute(job_id=job.pk, worker_id="w")
    client = as_role(Role.OPERATOR)
    response = client.post(reverse("jobs:rerun", args=[job.pk]), follow=True)
    assert response.status_code == 200
    assert "cannot be run again" in response.content.decode()
    assert Job.objects.get(pk=job.pk).status == Status.SUCCEEDED


def test_rerun_and_cancel_take_post_only(as_role):
    job = failed_job()
    client = as_role(Role.OPERATOR)
    assert client.get(reverse("jobs:rerun", args=[job.pk])).status_code == 405
    assert client.get(reverse("jobs:cancel", args=[job.pk])).status_code == 405


def test_anonymous_is_sent_to_log_in(admin_user, client):
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    for url in [reverse("jobs:list"), reverse("jobs:detail", args=[job.pk]), reverse("jobs:progress", args=[job.pk])]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:login")), url
    assert client.post(reverse("jobs:rerun", args=[job.pk])).status_code == 302
