"""Job kinds used by the in-process engine tests. Each step records its calls."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

from django.utils import timezone

from pamportal.jobs.choices import Status
from pamportal.jobs.engine import job_execute, step_claim
from pamportal.jobs.reaper import leases_reap
from pamportal.jobs.registry import JobKind, StepSpec, register
from pamportal.jobs.services import job_create

CALLS: Counter = Counter()
NESTED: list[str] = []


def _one(ctx):
    CALLS["one"] += 1
    ctx.log("one ran")
    return {"one": 1}


def _two(ctx):
    CALLS["two"] += 1
    ctx.log("two ran")
    return {"two": 2}


def _boom(ctx):
    CALLS["boom"] += 1
    ctx.log("about to fail")
    raise RuntimeError("disk on fire")


def _reenter(ctx):
    """While this step holds its lease, the queue delivers the job again to another worker."""
    CALLS["reenter"] += 1
    NESTED.append(job_execute(job_id=ctx.job.pk, worker_id="worker-B"))
    return {"reentered": True}


def _reaped_meanwhile(ctx):
    """The worker is so slow that its lease expires and the reaper acts while it runs."""
    CALLS["slow"] += 1
    leases_reap(now=timezone.now() + timedelta(hours=1))
    return {"late": True}


PLAIN = register(JobKind("test.plain", "Plain test job", (StepSpec("one", "One", _one), StepSpec("two", "Two", _two))))
RETRYABLE = register(
    JobKind("test.retryable", "Retryable test job",
            (StepSpec("one", "One", _one, max_attempts=2), StepSpec("two", "Two", _two, max_attempts=2)))
)
FAILING = register(JobKind("test.failing", "Failing test job", (StepSpec("boom", "Boom", _boom), StepSpec("two", "Two", _two))))
REENTRANT = register(
    JobKind("test.reentrant", "Re-entrant test job", (StepSpec("reenter", "Re-enter", _reenter), StepSpec("two", "Two", _two)))
)
REAPED = register(
    JobKind("test.reaped", "Reaped-while-running test job",
            (StepSpec("slow", "Slow", _reaped_meanwhile), StepSpec("two", "Two", _two)))
)

RECORDED: list[tuple[str, dict]] = []
BARRIER_PARTIES = 3


def _together(ctx):
    """A step of a group: it waits for its siblings, so it passes only if they run at once."""
    CALLS[ctx.step.name] += 1
    ctx.log(f"{ctx.step.name} waiting for the others")
    BARRIER.wait(timeout=5)
    if ctx.step.name == "g-boom":
        raise RuntimeError("one of three broke")
    return {"name": ctx.step.name}


def _record(ctx, result):
    RECORDED.append((ctx.step.name, result))
    return {**result, "recorded": True}


def _group(*names):
    return tuple(StepSpec(n, n, _together, group="g", record=_record) for n in names)


GROUPED = register(JobKind("test.grouped", "Grouped test job", (*_group("g-a", "g-b", "g-c"), StepSpec("two", "Two", _two))))
GROUPED_FAILING = register(
    JobKind("test.grouped-failing", "Grouped failing test job", (*_group("g-a", "g-boom", "g-c"), StepSpec("two", "Two", _two)))
)
BARRIER = threading.Barrier(BARRIER_PARTIES)


def reset() -> None:
    CALLS.clear()
    NESTED.clear()
    RECORDED.clear()
    BARRIER.reset()


def failed_job():
    """A job of kind PLAIN whose step a dead worker left running, failed by the reaper."""
    job = job_create(kind=PLAIN.name, enqueue=False)
    step_claim(job.pk, "dead-worker")
    leases_reap(now=timezone.now() + timedelta(hours=1))
    job.refresh_from_db()
    assert job.status == Status.FAILED
    return job
