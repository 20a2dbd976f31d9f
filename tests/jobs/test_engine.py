"""The engine in-process: output order, execution, duplicate deliveries, the reaper,
run again and cancel. No worker; the reaper is given a future ``now`` instead of sleeping."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.conf import settings
from django.utils import timezone

from pamportal.audit.actions import AuditAction
from pamportal.jobs.choices import Status
from pamportal.jobs.engine import (
    IllegalTransition,
    _record_step_outcome,
    job_execute,
    job_log,
    step_claim,
)
from pamportal.jobs.leases import lease_renew
from pamportal.jobs.models import Job, OutputLine, Step
from pamportal.jobs.reaper import leases_reap, stall_after
from pamportal.jobs.selectors import job_output
from pamportal.jobs.services import job_cancel, job_create, job_rerun
from tests.jobs import kinds
from tests.support.audit import events

pytestmark = pytest.mark.django_db


def later(seconds: float | None = None):
    return timezone.now() + timedelta(seconds=seconds if seconds is not None else settings.PAM_JOB_LEASE_SECONDS + 5)


def statuses(job):
    return [s.status for s in Step.objects.filter(job=job).order_by("index")]


def text(job) -> str:
    return "\n".join(job_output(job).values_list("text", flat=True))


# --- output ----------------------------------------------------------------------------
def test_output_lines_are_numbered_in_order_and_can_be_read_after_n():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    for i in range(25):
        job_log(job, f"line {i}", level="warning" if i % 5 == 0 else "info")
    lines = list(job_output(job))
    assert [line.counter for line in lines] == list(range(1, 27))
    assert [line.text for line in lines[1:]] == [f"line {i}" for i in range(25)]
    assert Job.objects.get(pk=job.pk).output_counter == 26
    assert [line.text for line in job_output(job, after=24)] == ["line 23", "line 24"]


def test_output_counters_are_per_job():
    a = job_create(kind=kinds.PLAIN.name, enqueue=False)
    b = job_create(kind=kinds.PLAIN.name, enqueue=False)
    job_log(a, "a1")
    job_log(b, "b1")
    job_log(a, "a2")
    assert list(job_output(a).values_list("counter", "text"))[1:] == [(2, "a1"), (3, "a2")]
    assert list(job_output(b).values_list("counter", "text"))[1:] == [(2, "b1")]


# --- create and execute -------------------------------------------------------------------
def test_create_makes_steps_from_the_registry_audits_and_enqueues_on_commit(django_capture_on_commit_callbacks, make_user):
    from pamportal.accounts.roles import Role

    user = make_user("op", Role.OPERATOR)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = job_create(kind=kinds.RETRYABLE.name, created_by=user, params={"x": 1})
    assert len(callbacks) == 1  # run_job.delay(job.pk), once committed
    assert job.status == Status.PENDING and job.params == {"x": 1} and job.created_by == user
    assert list(job.steps.values_list("name", "max_attempts", "status")) == [
        ("one", 2, "pending"), ("two", 2, "pending")]
    event = events(AuditAction.JOB_STARTED)[-1]
    assert event.target == f"job:{job.pk}" and event.actor_name == "system"  # no request: the system acts
    assert '"kind":"test.retryable"' in event.details.replace(" ", "")


def test_create_refuses_an_unknown_kind():
    with pytest.raises(LookupError, match="no job kind named 'nope'"):
        job_create(kind="nope", enqueue=False)
    assert not Job.objects.exists()


def test_execute_runs_every_step_in_order_and_records_results():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    assert job_execute(job_id=job.pk, worker_id="w1") == "succeeded"
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED and job.started_at and job.finished_at
    steps = list(job.steps.order_by("index"))
    assert [s.status for s in steps] == ["succeeded", "succeeded"]
    assert [s.result for s in steps] == [{"one": 1}, {"two": 2}]
    assert all(s.attempts == 1 and s.lease_owner == "w1" and s.lease_expires_at is None for s in steps)
    out = text(job)
    assert out.index("one ran") < out.index("two ran") < out.index("job succeeded")
    assert kinds.CALLS == {"one": 1, "two": 1}
    finished = events(AuditAction.JOB_FINISHED)[-1]
    assert finished.outcome == "succeeded" and finished.target == f"job:{job.pk}"


def test_a_failing_step_fails_the_job_and_skips_the_rest():
    job = job_create(kind=kinds.FAILING.name, enqueue=False)
    assert job_execute(job_id=job.pk, worker_id="w1") == "failed"
    job.refresh_from_db()
    assert job.status == Status.FAILED
    assert statuses(job) == ["failed", "skipped"]
    assert "RuntimeError: disk on fire" in job.steps.get(index=0).error
    assert "disk on fire" in text(job)
    assert kinds.CALLS == {"boom": 1}
    assert events(AuditAction.JOB_FINISHED)[-1].outcome == "failed"


# --- exactly once ------------------------------------------------------------------------
def test_a_duplicate_delivery_does_not_run_a_step_another_worker_holds():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    outcome, _, step = step_claim(job.pk, "worker-A")  # worker A holds step one under a live lease
    assert outcome == "claimed"
    assert job_execute(job_id=job.pk, worker_id="worker-B") == "held"
    step.refresh_from_db()
    assert step.status == Status.RUNNING and step.lease_owner == "worker-A" and step.attempts == 1
    assert kinds.CALLS == {}  # worker B ran nothing


def test_a_second_delivery_while_the_step_runs_is_harmless():
    job = job_create(kind=kinds.REENTRANT.name, enqueue=False)
    assert job_execute(job_id=job.pk, worker_id="worker-A") == "succeeded"
    assert kinds.NESTED == ["held"]  # the second delivery found step one held
    assert kinds.CALLS == {"reenter": 1, "two": 1}
    assert [s.attempts for s in Step.objects.filter(job=job)] == [1, 1]


def test_a_late_redelivery_of_a_finished_job_does_nothing():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    job_execute(job_id=job.pk, worker_id="w1")
    lines = job.output.count()
    assert job_execute(job_id=job.pk, worker_id="w2") == "succeeded"
    assert kinds.CALLS == {"one": 1, "two": 1}
    assert job.output.count() == lines


def test_lease_renewal_extends_only_the_holders_lease():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    _, _, step = step_claim(job.pk, "worker-A")
    first = step.lease_expires_at
    assert lease_renew(step_id=step.pk, worker_id="worker-A", now=later(10))
    step.refresh_from_db()
    assert step.lease_expires_at > first
    assert not lease_renew(step_id=step.pk, worker_id="worker-B")


# --- the reaper -----------------------------------------------------------------------
def test_reaper_leaves_live_leases_alone():
    job = job_create(kind=kinds.RETRYABLE.name, enqueue=False)
    step_claim(job.pk, "worker-A")
    assert leases_reap(now=timezone.now()) == {"requeued": 0, "failed": 0, "stalled": 0}
    assert statuses(job) == ["running", "pending"]


def test_reaper_requeues_a_step_with_attempts_left(django_capture_on_commit_callbacks):
    job = job_create(kind=kinds.RETRYABLE.name, enqueue=False)
    step_claim(job.pk, "dead-worker:123")  # claimed, then the worker died: no renewals
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert leases_reap(now=later()) == {"requeued": 1, "failed": 0, "stalled": 0}
    assert len(callbacks) == 1  # the job goes back on the queue
    step = job.steps.get(index=0)
    assert step.status == Status.PENDING and step.attempts == 1 and step.lease_owner == ""
    job.refresh_from_db()
    assert job.status == Status.RUNNING
    assert "worker dead-worker:123 stopped renewing its lease at" in text(job)
    assert "step 'one' re-queued" in text(job)
    event = events(AuditAction.STEP_LEASE_EXPIRED)[-1]
    assert event.target == f"job:{job.pk}" and '"then":"re-queued"' in event.details.replace(" ", "")
    # The re-delivered job runs the step again (second attempt) and finishes.
    assert job_execute(job_id=job.pk, worker_id="worker-B") == "succeeded"
    assert list(job.steps.values_list("status", "attempts")) == [("succeeded", 2), ("succeeded", 1)]


def test_reaper_fails_a_step_whose_attempts_are_exhausted_and_the_job_with_it():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)  # max_attempts = 1
    step_claim(job.pk, "dead-worker:9")
    assert leases_reap(now=later()) == {"requeued": 0, "failed": 1, "stalled": 0}
    job.refresh_from_db()
    assert job.status == Status.FAILED and job.finished_at
    assert statuses(job) == ["failed", "skipped"]
    out = text(job)
    assert "worker dead-worker:9 stopped renewing its lease at" in out and "step 'one' failed" in out
    assert "stopped renewing its lease" in job.steps.get(index=0).error
    assert not Step.objects.filter(status=Status.RUNNING).exists()
    assert events(AuditAction.STEP_LEASE_EXPIRED)[-1].outcome == "failed"
    assert events(AuditAction.JOB_FINISHED)[-1].outcome == "failed"
    # A second reaper pass has nothing left to do.
    assert leases_reap(now=later()) == {"requeued": 0, "failed": 0, "stalled": 0}


def test_retryable_step_fails_once_attempts_run_out():
    job = job_create(kind=kinds.RETRYABLE.name, enqueue=False)
    step_claim(job.pk, "dead-1")
    leases_reap(now=later())
    step_claim(job.pk, "dead-2")
    assert leases_reap(now=later()) == {"requeued": 0, "failed": 1, "stalled": 0}
    assert list(job.steps.values_list("status", "attempts")) == [("failed", 2), ("skipped", 0)]


def test_a_worker_that_lost_its_lease_cannot_record_its_outcome():
    job = job_create(kind=kinds.REAPED.name, enqueue=False)
    assert job_execute(job_id=job.pk, worker_id="slow-worker") == "lost"
    job.refresh_from_db()
    assert job.status == Status.FAILED  # the reaper's verdict stands
    step = job.steps.get(index=0)
    assert step.status == Status.FAILED and step.result == {}
    assert "finished after losing its lease" in text(job)
    assert kinds.CALLS == {"slow": 1}


# --- run again, cancel -----------------------------------------------------------------
def test_rerun_puts_a_failed_job_and_its_unfinished_steps_back(django_capture_on_commit_callbacks, make_user):
    from pamportal.accounts.roles import Role

    user = make_user("op", Role.OPERATOR)
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    step_claim(job.pk, "dead")
    leases_reap(now=later())
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job_rerun(job_id=job.pk, user=user)
    assert len(callbacks) == 1
    job.refresh_from_db()
    assert job.status == Status.PENDING and job.runs == 2 and job.finished_at is None
    assert list(job.steps.values_list("status", "attempts", "error")) == [("pending", 0, ""), ("pending", 0, "")]
    assert "run 2 requested by op" in text(job)
    assert events(AuditAction.JOB_RERUN)[-1].target == f"job:{job.pk}"
    assert job_execute(job_id=job.pk, worker_id="w") == "succeeded"


def test_rerun_keeps_succeeded_steps():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    step_claim(job.pk, "w")
    # step one succeeds, then step two's worker dies
    _record_step_outcome(job, job.steps.get(index=0), "w", {"one": 1}, "")
    step_claim(job.pk, "dead")
    leases_reap(now=later())
    job_rerun(job_id=job.pk, user=None)
    assert statuses(job) == ["succeeded", "pending"]
    assert job_execute(job_id=job.pk, worker_id="w2") == "succeeded"
    assert kinds.CALLS == {"two": 1}  # step one did not run again


def test_rerun_of_a_succeeded_or_running_job_is_refused():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    step_claim(job.pk, "w")
    with pytest.raises(IllegalTransition, match="only a failed or cancelled job can be run again"):
        job_rerun(job_id=job.pk, user=None)
    assert Job.objects.get(pk=job.pk).status == Status.RUNNING
    job2 = job_create(kind=kinds.PLAIN.name, enqueue=False)
    job_execute(job_id=job2.pk, worker_id="w")
    with pytest.raises(IllegalTransition, match="cannot move from succeeded to pending"):
        job_rerun(job_id=job2.pk, user=None)
    assert Job.objects.get(pk=job2.pk).runs == 1


def test_cancel_stops_a_job_and_a_late_delivery_runs_nothing():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    job_cancel(job_id=job.pk, user=None)
    job.refresh_from_db()
    assert job.status == Status.CANCELLED and statuses(job) == ["cancelled", "cancelled"]
    assert job_execute(job_id=job.pk, worker_id="w") == "cancelled"
    assert kinds.CALLS == {}
    assert events(AuditAction.JOB_CANCELLED)[-1].target == f"job:{job.pk}"
    with pytest.raises(IllegalTransition):
        job_cancel(job_id=job.pk, user=None)
    job_rerun(job_id=job.pk, user=None)
    assert job_execute(job_id=job.pk, worker_id="w") == "succeeded"


def test_cancel_while_a_step_runs_discards_its_outcome():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    _, _, step = step_claim(job.pk, "w")
    job_cancel(job_id=job.pk, user=None)
    assert _record_step_outcome(job, step, "w", {"one": 1}, "") == "lost"
    assert statuses(job) == ["cancelled", "cancelled"]
    assert OutputLine.objects.filter(job=job, text__contains="outcome was discarded").exists()


def test_reaper_queues_again_a_job_left_waiting_with_nothing_running(django_capture_on_commit_callbacks):
    """A queue message lost with a killed worker (kombu's filesystem transport does
    that) must not leave a job waiting for ever."""
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)  # as if its message were lost
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert leases_reap(now=timezone.now())["stalled"] == 0  # not waiting long enough yet
    assert callbacks == []
    when = timezone.now() + stall_after() + timedelta(seconds=1)
    with mock.patch("django.utils.timezone.now", return_value=when):  # the clock moves on
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            assert leases_reap() == {"requeued": 0, "failed": 0, "stalled": 1}
        assert len(callbacks) == 1
        assert "no worker has taken this job since" in text(job)
        # The line written is new activity: the next pass in the same period leaves it be.
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            assert leases_reap()["stalled"] == 0
        assert callbacks == []
    assert job_execute(job_id=job.pk, worker_id="w") == "succeeded"
    assert leases_reap(now=when + stall_after() * 2)["stalled"] == 0  # finished jobs are not touched


def test_reaper_does_not_queue_again_a_job_whose_step_holds_a_live_lease():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    _, _, step = step_claim(job.pk, "worker-A")
    far = timezone.now() + stall_after() * 2
    lease_renew(step_id=step.pk, worker_id="worker-A", now=far)  # a long step, still renewed
    assert leases_reap(now=far) == {"requeued": 0, "failed": 0, "stalled": 0}


def test_a_step_this_worker_does_not_know_fails_with_the_reason():
    job = job_create(kind=kinds.PLAIN.name, enqueue=False)
    Job.objects.filter(pk=job.pk).update(kind="test.not-loaded-here")  # as on a worker without the plugin
    assert job_execute(job_id=job.pk, worker_id="w") == "failed"
    step = job.steps.get(index=0)
    assert step.status == Status.FAILED and "no job kind named 'test.not-loaded-here'" in step.error
    assert not Step.objects.filter(job=job, status=Status.RUNNING).exists()
