"""Preflight pages through real URLs with real users: who sees, who runs, who accepts;
the live partial keeps polling while the job runs and answers 286 once it is over."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction
from pamportal.audit.models import AuditEvent
from pamportal.jobs.engine import job_execute, step_claim
from pamportal.jobs.reaper import leases_reap
from pamportal.preflight.checks import BY_ID
from pamportal.preflight.models import CheckOutcome, PreflightRun, WarningAcceptance
from pamportal.preflight.services import preflight_run_start
from tests.preflight.support import context

pytestmark = pytest.mark.django_db

ONLY = ("hardware.cpu", "address.format", "etcd.binary")


@pytest.fixture
def quick_context(tmp_path):
    """Three checks: the CPU one fails as an acceptable warning, etcd fails as an error."""
    skip = tuple(sorted(set(BY_ID) - set(ONLY)))
    return context(tmp_path, skip=skip, search_path=str(tmp_path)).with_thresholds(min_cpus=10_000)


def finished_run(admin_user, ctx, capture):
    with capture(execute=False):
        run = preflight_run_start(user=admin_user, context=ctx)
    job_execute(job_id=run.job_id, worker_id="w1")
    return run


def test_viewer_sees_history_and_results_but_cannot_run_or_accept(as_role, admin_user, quick_context,
                                                                  django_capture_on_commit_callbacks):
    run = finished_run(admin_user, quick_context, django_capture_on_commit_callbacks)
    client = as_role(Role.VIEWER)
    listing = client.get(reverse("preflight:list")).content.decode()
    assert f'href="{reverse("preflight:detail", args=[run.pk])}"' in listing
    assert 'action="/preflight/run/"' not in listing
    page = client.get(reverse("preflight:detail", args=[run.pk])).content.decode()
    assert "hardware.cpu" in page and "only " in page and "CPUs available" in page
    assert "apt-get install etcd-server" in page  # the remediation line
    assert "may be accepted" in page and "accept-form" not in page
    cpu = CheckOutcome.objects.get(run=run, check_id="hardware.cpu")
    assert client.post(reverse("preflight:run")).status_code == 403
    assert client.post(reverse("preflight:accept", args=[cpu.pk]), {"reason": "a viewer tries this"}).status_code == 403
    assert PreflightRun.objects.count() == 1 and not WarningAcceptance.objects.exists()


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.ADMINISTRATOR])
def test_runners_start_a_run_and_accept_a_warning_with_a_reason(as_role, role, admin_user, quick_context,
                                                               django_capture_on_commit_callbacks):
    client = as_role(role)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(reverse("preflight:run"))
    run = PreflightRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("preflight:detail", args=[run.pk])
    assert len(callbacks) == 1 and run.created_by.role == role

    done = finished_run(admin_user, quick_context, django_capture_on_commit_callbacks)
    cpu = CheckOutcome.objects.get(run=done, check_id="hardware.cpu")
    page = client.get(reverse("preflight:detail", args=[done.pk])).content.decode()
    assert f'action="{reverse("preflight:accept", args=[cpu.pk])}"' in page
    etcd = CheckOutcome.objects.get(run=done, check_id="etcd.binary")
    assert f'action="{reverse("preflight:accept", args=[etcd.pk])}"' not in page  # an error has no form

    refused = client.post(reverse("preflight:accept", args=[cpu.pk]), {"reason": "meh"}, follow=True)
    assert "at least 10 characters" in refused.content.decode()
    response = client.post(reverse("preflight:accept", args=[cpu.pk]), {"reason": "two CPUs is fine for this lab"})
    assert response.status_code == 302 and response["Location"] == reverse("preflight:detail", args=[done.pk])
    page = client.get(reverse("preflight:detail", args=[done.pk])).content.decode()
    assert "two CPUs is fine for this lab" in page and "Accepted by" in page
    assert WarningAcceptance.objects.get().outcome == cpu
    assert AuditEvent.objects.filter(action=AuditAction.PREFLIGHT_WARNING_ACCEPTED).count() == 1
    assert AuditEvent.objects.filter(action=AuditAction.PREFLIGHT_ACCEPT_REFUSED).count() == 1

    error = client.post(reverse("preflight:accept", args=[etcd.pk]), {"reason": "we know, it is fine"}, follow=True)
    assert "errors block until they are fixed" in error.content.decode()


def test_accept_goes_back_to_a_safe_next_page_only(as_role, admin_user, quick_context,
                                                    django_capture_on_commit_callbacks):
    done = finished_run(admin_user, quick_context, django_capture_on_commit_callbacks)
    cpu = CheckOutcome.objects.get(run=done, check_id="hardware.cpu")
    client = as_role(Role.OPERATOR)
    response = client.post(reverse("preflight:accept", args=[cpu.pk]),
                           {"reason": "elsewhere is not allowed", "next": "https://evil.example/"})
    assert response["Location"] == reverse("preflight:detail", args=[done.pk])
    WarningAcceptance.objects.all().delete()
    response = client.post(reverse("preflight:accept", args=[cpu.pk]), {"reason": "back to the wizard", "next": "/setup/"})
    assert response["Location"] == "/setup/"


def test_results_poll_while_running_and_answer_286_once_over(as_role, admin_user, quick_context,
                                                             django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        run = preflight_run_start(user=admin_user, context=quick_context)
    step_claim(run.job_id, "w1")
    client = as_role(Role.VIEWER)
    url = reverse("preflight:results", args=[run.pk])
    response = client.get(url, HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert f'hx-get="{url}"' in body and 'hx-trigger="every 2s"' in body and 'hx-swap="outerHTML"' in body
    assert body.strip().startswith("<section") and body.strip().endswith("</section>")
    assert "Not run yet" in body
    page = client.get(reverse("preflight:detail", args=[run.pk])).content.decode()
    assert 'hx-trigger="load delay:500ms, every 2s"' in page

    leases_reap(now=timezone.now() + timedelta(hours=1))  # the claiming worker "died": its step is re-queued
    assert job_execute(job_id=run.job_id, worker_id="w2") == "succeeded"
    response = client.get(url, HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 286
    assert "hx-get" not in body and "hx-trigger" not in body
    assert 'data-blocking="2"' in body and "2 checks block the next step" in body


def test_anonymous_goes_to_login_and_get_on_actions_is_refused(client, admin_user, as_role):
    assert client.get(reverse("preflight:list")).status_code == 302
    assert client.post(reverse("preflight:run")).status_code == 302
    operator = as_role(Role.OPERATOR)
    assert operator.get(reverse("preflight:run")).status_code == 405
    assert operator.get(reverse("preflight:accept", args=[1])).status_code == 405
    assert operator.get(reverse("preflight:detail", args=[999])).status_code == 404


def test_history_page_query_count_does_not_grow_with_runs(as_role, admin_user, quick_context,
                                                          django_capture_on_commit_callbacks,
                                                          django_assert_max_num_queries):
    client = as_role(Role.VIEWER)
    finished_run(admin_user, quick_context, django_capture_on_commit_callbacks)
    with django_assert_max_num_queries(12) as one:
        client.get(reverse("preflight:list"))
    for _ in range(4):
        finished_run(admin_user, quick_context, django_capture_on_commit_callbacks)
    with django_assert_max_num_queries(len(one.captured_queries)):
        assert client.get(reverse("preflight:list")).status_code == 200
