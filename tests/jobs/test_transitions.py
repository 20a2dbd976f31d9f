"""The one locked transition service: legal moves happen, illegal ones are refused."""

from __future__ import annotations

import itertools

import pytest

from pamportal.jobs.choices import TERMINAL, TRANSITIONS, Status
from pamportal.jobs.engine import IllegalTransition, job_log, status_transition
from pamportal.jobs.models import Job, Step
from pamportal.jobs.services import job_create
from tests.jobs import kinds

pytestmark = pytest.mark.django_db

PAIRS = list(itertools.product(Status, Status))

# The allowed moves, written out by hand rather than read from ``TRANSITIONS``, so that a
# change to the table in the code has to be made here too. "running -> pending" is the
# reaper re-queueing a step whose worker died; "failed/cancelled/skipped -> pending" is
# an operator running a job again; nothing leaves "succeeded".
ALLOWED = {
    ("pending", "running"), ("pending", "skipped"), ("pending", "cancelled"),
    ("running", "succeeded"), ("running", "failed"), ("running", "cancelled"), ("running", "pending"),
    ("failed", "pending"),
    ("cancelled", "pending"),
    ("skipped", "pending"),
}


def _set(obj, status):
    type(obj).objects.filter(pk=obj.pk).update(status=status)
    obj.refresh_from_db()


@pytest.mark.parametrize("current,to", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
@pytest.mark.parametrize("what", ["job", "step"])
def test_every_move_is_allowed_or_refused_as_the_table_says(what, current, to):
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    obj = job if what == "job" else job.steps.get(index=0)
    _set(obj, current)
    if (current, to) in ALLOWED:
        status_transition(obj, to)
        obj.refresh_from_db()
        assert obj.status == to
    else:
        with pytest.raises(IllegalTransition) as info:
            status_transition(obj, to)
        assert f"cannot move from {current} to {to}" in str(info.value)
        obj.refresh_from_db()
        assert obj.status == current  # nothing changed


def test_terminal_group_and_final_states():
    assert Status.terminal() == {Status.SUCCEEDED, Status.FAILED, Status.SKIPPED, Status.CANCELLED}
    assert TRANSITIONS[Status.SUCCEEDED] == frozenset()
    assert Status.RUNNING not in TERMINAL and Status.PENDING not in TERMINAL


def test_timestamps_follow_the_moves():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    step = job.steps.get(index=0)
    assert step.started_at is None and step.finished_at is None
    status_transition(step, Status.RUNNING)
    step.refresh_from_db()
    assert step.started_at is not None and step.finished_at is None
    status_transition(step, Status.FAILED, error="x")
    step.refresh_from_db()
    assert step.finished_at >= step.started_at and step.error == "x"
    status_transition(step, Status.PENDING)
    step.refresh_from_db()
    assert step.started_at is None and step.finished_at is None


def test_refused_move_names_the_object_and_what_is_allowed():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    _set(job, Status.SUCCEEDED)
    with pytest.raises(IllegalTransition, match=rf"job #{job.pk} cannot move from succeeded to pending"):
        status_transition(job, Status.PENDING)
    step = Step.objects.get(job=job, index=1)
    with pytest.raises(IllegalTransition, match=r"step 'two' .* cannot move from pending to succeeded; .* may move to"):
        status_transition(step, Status.SUCCEEDED)


def test_transition_does_not_clobber_the_output_counter():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)  # wrote one line
    stale = Job.objects.get(pk=job.pk)
    job_log(job, "a")
    job_log(job, "b")
    status_transition(stale, Status.RUNNING)  # a stale copy must not write output_counter back
    assert Job.objects.get(pk=job.pk).output_counter == 3
