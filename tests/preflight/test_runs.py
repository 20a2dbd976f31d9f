"""A whole preflight run through the job engine (in-process): outcomes, steps, what
blocks, accepting warnings (audited, refused for errors), a worker dying mid-run."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from django.utils import timezone

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.jobs.choices import Status
from pamportal.jobs.engine import job_execute, step_claim
from pamportal.jobs.models import Step
from pamportal.jobs.reaper import leases_reap
from pamportal.preflight.checks import CATALOGUE, CheckStatus, Severity
from pamportal.preflight.models import CheckOutcome
from pamportal.preflight.selectors import preflight_blocking, preflight_latest
from pamportal.preflight.services import (
    PreflightRefused,
    preflight_run_start,
    preflight_run_sync,
    preflight_warning_accept,
)
from tests.preflight.support import SntpResponder, context, held_port
from tests.support.audit import events

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(make_user):
    return make_user("op", Role.OPERATOR)


def start(user, ctx, django_capture_on_commit_callbacks, **kw):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = preflight_run_start(user=user, context=ctx, **kw)
    assert len(callbacks) == 1  # the job is queued once committed
    return run


def outcome(run, check_id) -> CheckOutcome:
    return CheckOutcome.objects.get(run=run, check_id=check_id)


def test_a_passing_run_records_every_check_as_its_own_step(tmp_path, operator, licensed, fake_etcd,
                                                          django_capture_on_commit_callbacks):
    with SntpResponder() as ntp, held_port() as pg:
        ctx = context(tmp_path, ntp=(ntp.address,), postgres_port=pg, search_path=fake_etcd)
        run = start(operator, ctx, django_capture_on_commit_callbacks)
        assert [o.status for o in run.outcomes.all()] == [CheckStatus.PENDING] * len(CATALOGUE)
        assert preflight_blocking(run)  # nothing has run yet: it all blocks
        assert job_execute(job_id=run.job_id, worker_id="w1") == Status.SUCCEEDED
    run.refresh_from_db()
    steps = list(Step.objects.filter(job_id=run.job_id).order_by("index"))
    assert [s.name for s in steps] == [c.id for c in CATALOGUE]
    assert {s.status for s in steps} == {Status.SUCCEEDED}
    assert {s.lease_owner for s in steps} == {"w1"} and {s.attempts for s in steps} == {1}
    assert all(s.result["check"] == s.name and s.result["status"] == "pass" for s in steps)
    assert {o.check_id: o.status for o in run.outcomes.all() if o.status != CheckStatus.PASS} == {}
    assert preflight_blocking(run) == []
    assert run.summary["pass"] == len(CATALOGUE) and run.summary["blocking"] == 0
    assert preflight_latest() == run
    assert events(AuditAction.PREFLIGHT_CHECK_FAILED) == []
    # The checks ran at once: their step times overlap.
    assert max(s.started_at for s in steps) < min(s.finished_at for s in steps)


def test_errors_block_warnings_block_until_accepted_and_every_failure_is_audited(
    tmp_path, operator, licensed, fake_etcd, django_capture_on_commit_callbacks
):
    with SntpResponder(skew=0.7) as ntp, held_port() as busy:
        ctx = context(tmp_path, ntp=(ntp.address,), search_path=fake_etcd).with_thresholds(min_cpus=10_000)
        ctx = replace(ctx, ports={**ctx.ports, "2390": busy})
        run = start(operator, ctx, django_capture_on_commit_callbacks)
        job_execute(job_id=run.job_id, worker_id="w1")
    failing = {o.check_id: (o.severity, o.status) for o in run.outcomes.all() if o.failing}
    assert failing == {
        "hardware.cpu": (Severity.WARNING, CheckStatus.FAIL),
        "port.2390.free": (Severity.ERROR, CheckStatus.FAIL),
        "port.5432.reachable": (Severity.WARNING, CheckStatus.FAIL),  # no PostgreSQL in this context
        "clock.ntp-offset": (Severity.WARNING, CheckStatus.FAIL),
    }
    failed_events = events(AuditAction.PREFLIGHT_CHECK_FAILED)
    assert len(failed_events) == 4 and all(e.outcome == Outcome.FAILED for e in failed_events)
    assert all(e.target == f"preflight:{run.pk}" for e in failed_events)
    assert sorted(o.check_id for o in preflight_blocking(run)) == sorted(failing)

    for check_id in ("hardware.cpu", "port.5432.reachable", "clock.ntp-offset"):
        acceptance = preflight_warning_accept(outcome_id=outcome(run, check_id).pk, user=operator,
                                              reason="lab node for the integration tests")
        assert acceptance.user == operator and acceptance.reason == "lab node for the integration tests"
    assert [o.check_id for o in preflight_blocking(run)] == ["port.2390.free"]  # the error still blocks
    accepted = events(AuditAction.PREFLIGHT_WARNING_ACCEPTED)
    assert len(accepted) == 3 and all(e.actor_id is None or e.outcome == Outcome.SUCCEEDED for e in accepted)
    assert "lab node for the integration tests" in accepted[0].details
    run.refresh_from_db()
    assert run.summary["blocking"] == 1


def test_acceptance_is_refused_with_a_reason_and_every_refusal_is_audited(
    tmp_path, operator, make_user, licensed, django_capture_on_commit_callbacks
):
    ctx = context(tmp_path, search_path=str(tmp_path)).with_thresholds(min_cpus=10_000)  # no etcd on this PATH
    run = start(operator, ctx, django_capture_on_commit_callbacks)
    job_execute(job_id=run.job_id, worker_id="w1")
    cpu, etcd, address = outcome(run, "hardware.cpu"), outcome(run, "etcd.binary"), outcome(run, "address.format")
    viewer = make_user("vera", Role.VIEWER)
    cases = [
        (etcd.pk, operator, "we will install it later on", "etcd.binary cannot be accepted: it is an error"),
        (address.pk, operator, "nothing to see here at all", "address.format cannot be accepted: it did not fail"),
        (cpu.pk, operator, "", "write why it is acceptable (at least 10 characters)"),
        (cpu.pk, operator, "   short  ", "write why it is acceptable (at least 10 characters)"),
        (cpu.pk, viewer, "a viewer tries to accept", "vera may not accept preflight warnings"),
        (999_999, operator, "no such outcome at all", "there is no check result #999999"),
    ]
    for outcome_id, user, reason, expected in cases:
        with pytest.raises(PreflightRefused) as refused:
            preflight_warning_accept(outcome_id=outcome_id, user=user, reason=reason)
        assert expected in str(refused.value)
    refusals = events(AuditAction.PREFLIGHT_ACCEPT_REFUSED)
    assert len(refusals) == len(cases) and {e.outcome for e in refusals} == {Outcome.DENIED}
    assert not CheckOutcome.objects.filter(acceptance__isnull=False).exists()

    preflight_warning_accept(outcome_id=cpu.pk, user=operator, reason="a two-CPU lab machine")
    with pytest.raises(PreflightRefused, match="already accepted by op"):
        preflight_warning_accept(outcome_id=cpu.pk, user=operator, reason="a second time, for luck")
    assert sorted(o.check_id for o in preflight_blocking(run)) == ["clock.ntp-offset", "etcd.binary",
                                                                   "port.5432.reachable"]


def test_the_etcd_error_can_never_be_accepted_and_blocks(tmp_path, operator, licensed,
                                                         django_capture_on_commit_callbacks):
    run = start(operator, context(tmp_path, search_path=str(tmp_path)), django_capture_on_commit_callbacks)
    job_execute(job_id=run.job_id, worker_id="w1")
    etcd = outcome(run, "etcd.binary")
    assert etcd.status == CheckStatus.FAIL and not etcd.acceptable and etcd.blocking
    assert "apt-get install etcd-server" in etcd.remediation


def test_skipped_checks_do_not_block(tmp_path, operator, fake_etcd, django_capture_on_commit_callbacks):
    with held_port() as pg:
        ctx = context(tmp_path, postgres_port=pg, search_path=fake_etcd, ntp=())
        run = start(operator, ctx, django_capture_on_commit_callbacks,
                    skip=("licence.valid", "clock.ntp-offset"))
        job_execute(job_id=run.job_id, worker_id="w1")
    assert outcome(run, "licence.valid").status == CheckStatus.SKIPPED
    assert preflight_blocking(run) == []
    with pytest.raises(ValueError, match="no preflight check named nope"):
        preflight_run_start(user=operator, context=ctx, skip=("nope",))


def test_a_worker_that_dies_mid_run_leaves_its_steps_to_the_next(tmp_path, operator, licensed, fake_etcd,
                                                                django_capture_on_commit_callbacks):
    with held_port() as pg:
        ctx = context(tmp_path, postgres_port=pg, search_path=fake_etcd, skip=("clock.ntp-offset",))
        run = start(operator, ctx, django_capture_on_commit_callbacks)
        assert step_claim(run.job_id, "dead-worker")[0] == "claimed"  # ...and then it died
        assert job_execute(job_id=run.job_id, worker_id="w2") == "held"
        assert leases_reap(now=timezone.now() + timedelta(hours=1))["requeued"] == 1
        assert job_execute(job_id=run.job_id, worker_id="w2") == Status.SUCCEEDED
    steps = list(Step.objects.filter(job_id=run.job_id).order_by("index"))
    assert steps[0].attempts == 2 and {s.lease_owner for s in steps} == {"w2"}
    assert preflight_blocking(run) == []


def test_run_sync_executes_in_process_and_is_the_latest(tmp_path, operator, licensed, fake_etcd):
    with held_port() as pg:
        run = preflight_run_sync(user=operator, context=context(tmp_path, postgres_port=pg, search_path=fake_etcd),
                                 skip=("clock.ntp-offset",))
    assert run.job.status == Status.SUCCEEDED and preflight_latest() == run
    assert preflight_blocking(run) == []
