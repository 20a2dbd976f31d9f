"""The node's dashboard: identity, facts from the newest facts job, collecting them."""

from __future__ import annotations

import celery
import django
import pytest
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.jobs.choices import Status
from pamportal.jobs.engine import job_execute, step_claim
from pamportal.jobs.models import Job
from pamportal.jobs.services import job_create
from pamportal.nodes.facts import KIND
from pamportal.nodes.selectors import node_facts_latest, node_facts_running

pytestmark = pytest.mark.django_db


def collect_in_process() -> Job:
    job = job_create(kind=KIND, enqueue=False)
    assert job_execute(job_id=job.pk, worker_id="test-worker") == "succeeded"
    return Job.objects.get(pk=job.pk)


def test_facts_job_runs_all_steps_and_the_selector_merges_their_results():
    job = collect_in_process()
    assert list(job.steps.order_by("index").values_list("name", "status")) == [
        ("hardware", "succeeded"), ("storage", "succeeded"), ("software", "succeeded"),
        ("network", "succeeded"), ("clock", "succeeded")]
    latest = node_facts_latest()
    assert latest.job == job
    facts = latest.facts
    assert facts["cpu_count"] >= 1 and facts["memory_total_bytes"] > 0
    assert facts["disk_free_bytes"] > 0 and facts["data_dir"] == str(settings.PAM_DATA_DIR)
    assert facts["django"] == django.get_version() and facts["celery"] == celery.__version__
    assert isinstance(facts["listening_ports"], list)
    assert facts["utc"]


def test_dashboard_shows_identity_and_the_facts(as_role):
    collect_in_process()
    facts = node_facts_latest().facts
    response = as_role(Role.VIEWER).get(reverse("nodes:dashboard"))
    assert response.status_code == 200
    body = response.content.decode()
    assert settings.PAM_NODE_ADDRESS in body and "standalone" in body and settings.PAM_VERSION in body
    assert 'id="node-facts"' in body
    for label in ["CPU count", "Memory", "Free disk", "Operating system", "Python", "Django", "Celery",
                  "Listening ports", "Clock"]:
        assert label in body
    assert f"<td>{facts['cpu_count']}</td>" in body
    assert facts["python"] in body and facts["django"] in body and facts["celery"] in body
    assert facts["utc"] in body
    if not facts["listening_ports"]:
        pytest.skip("nothing listens on this machine, so there is no port for the page to show")
    assert str(facts["listening_ports"][0]) in body


def test_dashboard_without_facts_offers_collection_to_operators_only(as_role):
    body = as_role(Role.OPERATOR).get(reverse("nodes:dashboard")).content.decode()
    assert "No node facts have been collected yet" in body
    assert f'action="{reverse("nodes:collect_facts")}"' in body and "Collect node facts" in body


def test_viewer_sees_no_collect_button(as_role):
    body = as_role(Role.VIEWER).get(reverse("nodes:dashboard")).content.decode()
    assert "No node facts have been collected yet" in body
    assert reverse("nodes:collect_facts") not in body


def test_dashboard_shows_live_progress_of_a_running_collection(as_role):
    job = job_create(kind=KIND, enqueue=False)
    step_claim(job.pk, "w1")
    assert node_facts_running() == job
    body = as_role(Role.VIEWER).get(reverse("nodes:dashboard")).content.decode()
    assert f'hx-get="{reverse("jobs:progress", args=[job.pk])}?refresh=1"' in body
    assert 'hx-trigger="load delay:500ms, every 2s"' in body
    assert '<progress value="0" max="5"' in body


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.ADMINISTRATOR])
def test_operators_and_administrators_may_collect(as_role, role, django_capture_on_commit_callbacks):
    client = as_role(role)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(reverse("nodes:collect_facts"))
    assert response.status_code == 302 and response["Location"] == reverse("nodes:dashboard")
    assert len(callbacks) == 1  # queued for a worker once committed
    job = Job.objects.get(kind=KIND)
    assert job.status == Status.PENDING and job.created_by.role == role
    # A second click while it is pending starts nothing new.
    client.post(reverse("nodes:collect_facts"))
    assert Job.objects.filter(kind=KIND).count() == 1


@pytest.mark.parametrize("role", [Role.VIEWER, Role.APPROVER])
def test_other_roles_may_not_collect(as_role, role):
    client = as_role(role)
    assert client.get(reverse("nodes:dashboard")).status_code == 200
    assert client.post(reverse("nodes:collect_facts")).status_code == 403
    assert not Job.objects.filter(kind=KIND).exists()


def test_collect_takes_post_only(as_role):
    assert as_role(Role.OPERATOR).get(reverse("nodes:collect_facts")).status_code == 405


def test_anonymous_is_sent_to_log_in(admin_user, client):
    response = client.get(reverse("nodes:dashboard"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:login"))
    assert client.post(reverse("nodes:collect_facts")).status_code == 302
    assert not Job.objects.exists()


def test_collect_facts_command_runs_the_job_in_process(capsys):
    call_command("collect_facts")
    out = capsys.readouterr().out
    job = Job.objects.get(kind=KIND)
    assert job.status == Status.SUCCEEDED
    assert "job succeeded (5 of 5 steps succeeded)" in out and f"node facts collected (job #{job.pk})" in out
    assert node_facts_latest().job == job


@pytest.mark.parametrize("history", [
    [],
    ["succeeded"],
    ["succeeded", "failed", "running"],
    ["failed", "succeeded", "cancelled", "pending"],
    ["succeeded", "succeeded", "failed"],
    ["failed"] * 25,  # more failures than the window: the three queries answer
    ["succeeded"] + ["failed"] * 25,
])
def test_the_dashboard_overview_agrees_with_the_three_selectors(history):
    from datetime import timedelta

    from django.utils import timezone

    from pamportal.nodes.selectors import node_facts_last_failure, node_facts_overview

    start = timezone.now() - timedelta(hours=1)
    for i, status in enumerate(history):
        created = start + timedelta(minutes=i)
        finished = created + timedelta(seconds=30) if status in ("succeeded", "failed", "cancelled") else None
        job = job_create(kind=KIND, enqueue=False)
        Job.objects.filter(pk=job.pk).update(status=status, created_at=created, finished_at=finished)
    overview = node_facts_overview()
    latest = node_facts_latest()
    assert (overview.latest.job if overview.latest else None) == (latest.job if latest else None)
    assert overview.running == node_facts_running()
    assert overview.failure == node_facts_last_failure(latest)
    if "succeeded" in history:
        assert overview.latest is not None
