"""Parallel step groups: the engine claims a group's steps for one worker, runs them at
once, records each (with its kind's record hook) in the worker's thread."""

from __future__ import annotations

import pytest

from pamportal.jobs.choices import Status
from pamportal.jobs.engine import job_execute
from pamportal.jobs.models import OutputLine, Step
from pamportal.jobs.services import job_create
from tests.jobs import kinds

pytestmark = pytest.mark.django_db


def statuses(job):
    return {s.name: s.status for s in Step.objects.filter(job=job)}


def test_a_group_runs_its_steps_at_once_and_records_each():
    job = job_create(kind=kinds.GROUPED.name, enqueue=False)
    # Each step waits at a barrier for the other two: run one after another, it would time out.
    assert job_execute(job_id=job.pk, worker_id="w1") == Status.SUCCEEDED
    assert set(statuses(job).values()) == {Status.SUCCEEDED}
    steps = {s.name: s for s in Step.objects.filter(job=job)}
    assert {s.lease_owner for s in steps.values()} == {"w1"} and {s.attempts for s in steps.values()} == {1}
    assert steps["g-b"].result == {"name": "g-b", "recorded": True}
    assert sorted(name for name, _ in kinds.RECORDED) == ["g-a", "g-b", "g-c"]
    lines = list(OutputLine.objects.filter(job=job).values_list("text", flat=True))
    assert any("running 3 steps at once on worker w1" in line for line in lines)
    # Lines logged from the steps' threads are written, each under its step.
    assert OutputLine.objects.filter(job=job, step=steps["g-c"], text="g-c waiting for the others").exists()
    assert kinds.CALLS == {"g-a": 1, "g-b": 1, "g-c": 1, "two": 1}


def test_a_failed_step_fails_the_job_once_its_group_is_over():
    job = job_create(kind=kinds.GROUPED_FAILING.name, enqueue=False)
    assert job_execute(job_id=job.pk, worker_id="w1") == Status.FAILED
    assert statuses(job) == {"g-a": Status.SUCCEEDED, "g-boom": Status.FAILED, "g-c": Status.SUCCEEDED,
                             "two": Status.SKIPPED}
    assert "one of three broke" in Step.objects.get(job=job, name="g-boom").error
    assert OutputLine.objects.filter(job=job, text__contains="step 'g-boom' failed").exists()
