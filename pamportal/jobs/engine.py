"""The job engine: status transitions, output, claiming steps under leases, running them.

Every status change goes through ``status_transition`` (row locked, TRANSITIONS
checked). A step runs only after its worker has claimed it in a locked transaction
(status pending -> running, lease owner and expiry written), so a task the queue
delivers twice, or a second worker, finds the step held and leaves it alone:
exactly-once comes from the database, never from the queue. While steps run a thread
renews their leases (``leases``); a worker that dies stops renewing, and ``reaper.leases_reap``
re-queues or fails its steps with the reason in the job's output.

Consecutive steps of one ``group`` (``StepSpec.group``) run at once: the worker claims
the first as any step, then every other pending step of the group, runs each in a
thread, and records each outcome as it finishes. Only the worker's own thread writes
to the database (the steps' ``ctx.log`` lines are handed to it).

Lock order, everywhere: job row, then step rows, then the audit head (inside
``audit_record``). The lease renewal touches step rows and holds nothing else.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.refusals import Refused
from pamportal.audit.services import audit_record

from . import registry
from .choices import TERMINAL, TRANSITIONS, OutputLevel, Status
from .leases import LeaseKeeper, lease_length
from .models import Job, OutputLine, Step

logger = logging.getLogger(__name__)

MAX_LINE_CHARS = 10_000
DONE_STEP = frozenset({Status.SUCCEEDED, Status.SKIPPED})
_FLUSH_SECONDS = 0.2  # how often a worker running a group writes its steps' lines


class JobRefused(Refused):
    """A run-again or cancel the engine refuses; recorded against the job (outcome failed)."""

    def __init__(self, message: str, *, job_id: int | None, action: AuditAction | None = None,
                 outcome: Outcome = Outcome.FAILED):
        super().__init__(message, action=action, target=f"job:{job_id}", reason=message[:300], outcome=outcome)

    def audit_details(self) -> dict[str, Any]:
        return {"reason": self.reason}

    def record(self) -> None:
        if self.action is not None:  # a move refused outside a service: nothing to record
            super().record()


class JobNotFound(JobRefused, LookupError):
    pass


class IllegalTransition(JobRefused):
    """A status move that TRANSITIONS does not allow."""

    def __init__(self, obj: Job | Step, current: str, to: str, why: str = "", *, action: AuditAction | None = None):
        self.obj, self.current, self.to = obj, current, to
        what = f"job #{obj.pk}" if isinstance(obj, Job) else f"step {obj.name!r} of job #{obj.job_id}"
        if not why:
            allowed = ", ".join(sorted(TRANSITIONS[Status(current)])) or "nothing (final)"
            why = f"from {current} it may move to {allowed}"
        job_id = obj.pk if isinstance(obj, Job) else obj.job_id
        super().__init__(f"{what} cannot move from {current} to {to}; {why}", job_id=job_id, action=action)


def job_enqueue(job_id: int) -> None:
    """Queue the job once the caller's transaction commits."""
    transaction.on_commit(lambda: _send(job_id))


def _send(job_id: int) -> None:
    """One queue message, unless the job is the cluster's and this node does not lead
    (``placement``): then the leader takes it."""
    # tasks imports this module (its tasks call the engine): a real cycle.
    from .placement import handed_to_leader
    from .tasks import run_job

    if handed_to_leader(job_id):
        return
    run_job.delay(job_id)


# --- the one transition service ---------------------------------------------------------
@transaction.atomic
def status_transition(obj: Job | Step, to: Status | str, **changes: Any) -> Job | Step:
    """Move a job or a step to ``to`` under a row lock, refusing illegal moves.

    Sets ``started_at`` on entering running, ``finished_at`` on entering a terminal
    state, clears both on going back to pending. ``changes`` are further fields to
    write in the same UPDATE. Returns the locked, updated row (and refreshes ``obj``).
    """
    model = type(obj)
    to = Status(to)
    locked = model.objects.select_for_update().get(pk=obj.pk)
    current = Status(locked.status)
    if to not in TRANSITIONS[current]:
        raise IllegalTransition(locked, current, to)
    now = timezone.now()
    locked.status = to
    fields = {"status"}
    if to == Status.RUNNING:
        locked.started_at, locked.finished_at = now, None
        fields |= {"started_at", "finished_at"}
    elif to == Status.PENDING:
        locked.started_at = locked.finished_at = None
        fields |= {"started_at", "finished_at"}
    elif to in TERMINAL:
        locked.finished_at = now
        fields.add("finished_at")
    for name, value in changes.items():
        setattr(locked, name, value)
        fields.add(name)
    locked.save(update_fields=sorted(fields))
    for name in fields:
        setattr(obj, name, getattr(locked, name))
    return locked


# --- output ---------------------------------------------------------------------------
@transaction.atomic
def job_log(job: Job | int, text: str, *, step: Step | int | None = None, level: str = OutputLevel.INFO) -> OutputLine:
    """Append one output line; its counter is the job's next, taken under the job lock."""
    job_id = job.pk if isinstance(job, Job) else job
    step_id = step.pk if isinstance(step, Step) else step
    counter = Job.objects.select_for_update().values_list("output_counter", flat=True).get(pk=job_id) + 1
    Job.objects.filter(pk=job_id).update(output_counter=counter)
    text = str(text)
    if len(text) > MAX_LINE_CHARS:
        text = text[:MAX_LINE_CHARS] + " [truncated]"
    return OutputLine.objects.create(job_id=job_id, step_id=step_id, counter=counter, level=OutputLevel(level), text=text)


# --- the context a step gets ------------------------------------------------------------
@dataclass
class StepContext:
    """What a step function gets: the job, its step, the job's params, and ``log``.

    ``log`` from another thread than the worker's (a step of a parallel group) is
    handed to the worker, which writes it."""

    job: Job
    step: Step
    worker_id: str
    lease_lost: threading.Event = field(default_factory=threading.Event)
    lines: queue.SimpleQueue | None = None
    owner_thread: int = field(default_factory=threading.get_ident)

    @property
    def params(self) -> dict:
        return self.job.params

    def log(self, text: str, level: str = OutputLevel.INFO) -> None:
        if self.lines is not None and threading.get_ident() != self.owner_thread:
            self.lines.put((self.step, text, level))
        else:
            job_log(self.job, text, step=self.step, level=level)


# --- claiming and finishing -----------------------------------------------------------
def job_finish(job: Job, status: Status, reason: str = "") -> None:
    """Inside a transaction holding the job lock: end the job and skip what did not run."""
    if status != Status.SUCCEEDED:
        for step in Step.objects.select_for_update().filter(job=job, status=Status.PENDING):
            status_transition(step, Status.SKIPPED if status == Status.FAILED else Status.CANCELLED)
    status_transition(job, status)
    done = Step.objects.filter(job=job, status=Status.SUCCEEDED).count()
    total = Step.objects.filter(job=job).count()
    job_log(job, f"job {status.label.lower()} ({done} of {total} steps succeeded){': ' + reason if reason else ''}",
            level=OutputLevel.INFO if status == Status.SUCCEEDED else OutputLevel.ERROR)
    audit_record(
        action=AuditAction.JOB_FINISHED, target=f"job:{job.pk}",
        outcome=Outcome.SUCCEEDED if status == Status.SUCCEEDED else Outcome.FAILED,
        details={"kind": job.kind, "status": status.value, "run": job.runs, **({"reason": reason} if reason else {})},
    )


def _step_claim_one(job: Job, step: Step, worker_id: str, expires: datetime) -> None:
    status_transition(step, Status.RUNNING, lease_owner=worker_id, lease_expires_at=expires,
                      attempts=step.attempts + 1, error="")


def step_claim(job_id: int, worker_id: str) -> tuple[str, Job | None, Step | None]:
    """Lock the job, pick its next step and claim it (running, lease owner and expiry,
    attempts + 1). Returns (outcome, job, step): "claimed" with the step, or why there
    is nothing to run here: the job's final status, "held" (a step is running under
    someone's lease) or "missing"."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None:
            return "missing", None, None
        if job.status in TERMINAL:
            return job.status, job, None
        step = (
            Step.objects.select_for_update().filter(job=job).exclude(status__in=DONE_STEP).order_by("index").first()
        )
        if step is None:
            if job.status == Status.PENDING:
                status_transition(job, Status.RUNNING)
            job_finish(job, Status.SUCCEEDED)
            return Status.SUCCEEDED.value, job, None
        if step.status == Status.RUNNING:
            # Another worker holds it (or held it and died: the reaper decides, once its
            # lease has expired). Either way it is not ours to run.
            return "held", job, step
        if step.status != Status.PENDING:  # failed/cancelled under a job not yet ended
            if job.status == Status.PENDING:
                status_transition(job, Status.RUNNING)
            job_finish(job, Status.FAILED, f"step {step.name!r} is {step.status}")
            return Status.FAILED.value, job, step
        if job.status == Status.PENDING:
            status_transition(job, Status.RUNNING)
            job_log(job, f"run {job.runs} started on worker {worker_id}")
        _step_claim_one(job, step, worker_id, timezone.now() + lease_length())
        job_log(job, f"step {step.index + 1} \u00b7 {step.title}: started (attempt {step.attempts} of {step.max_attempts})", step=step)
        return "claimed", job, step


def _group_of(job: Job, step: Step) -> str:
    try:
        spec = next((s for s in registry.get(job.kind).steps if s.name == step.name), None)
    except LookupError:
        return ""
    return spec.group if spec is not None else ""


def _group_claim(job_id: int, first: Step, group: str, worker_id: str) -> list[Step]:
    """With ``first`` claimed, claim the other pending steps of its group (consecutive
    steps of the kind with the same group) for this worker, as ``step_claim`` would."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.status != Status.RUNNING:
            return []
        names = _group_names(job.kind, first.name, group)
        steps = list(
            Step.objects.select_for_update().filter(job=job, status=Status.PENDING, name__in=names)
            .exclude(pk=first.pk).order_by("index")
        )
        expires = timezone.now() + lease_length()
        for step in steps:
            _step_claim_one(job, step, worker_id, expires)
        if steps:
            job_log(job, f"running {len(steps) + 1} steps at once on worker {worker_id}", step=first)
        return steps


def _group_names(kind: str, first: str, group: str) -> list[str]:
    specs = registry.get(kind).steps
    start = next(i for i, s in enumerate(specs) if s.name == first)
    names = []
    for spec in specs[start:]:
        if spec.group != group:
            break
        names.append(spec.name)
    return names


# --- running --------------------------------------------------------------------------
def _json_safe(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        value = {"value": value}
    return json.loads(json.dumps(value, default=str))


def _spec_of(job: Job, step: Step) -> registry.StepSpec | None:
    try:
        return next((s for s in registry.get(job.kind).steps if s.name == step.name), None)
    except LookupError:
        return None


def _call(job: Job, spec: registry.StepSpec | None, ctx: StepContext) -> tuple[dict | None, str]:
    """Run one step: (result, "") or (None, the error). Never raises."""
    try:
        # A kind or step this worker does not know (a plugin not loaded here) is the
        # step's failure, with the reason, not a task crash leaving it "running".
        if spec is None:
            registry.get(job.kind)
            raise LookupError(f"job kind {job.kind!r} has no step named {ctx.step.name!r}")
        return _json_safe(spec.run(ctx)), ""
    except Exception as exc:  # the step's failure is recorded, not raised
        logger.exception("step %s of job %s failed", ctx.step.name, job.pk)
        return None, f"{type(exc).__name__}: {exc}"[:2000]


def _record_step_outcome(job: Job, step: Step, worker_id: str, result: dict | None, error: str, *,
                         spec: registry.StepSpec | None = None, finish: bool = True) -> str:
    """Lock job and step; record the outcome only if this worker still holds the lease.

    A step's ``record`` hook runs here, in the same transaction. ``finish=False`` (a
    step of a group) leaves ending a failed job to the caller, once the group is over."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        current = Step.objects.select_for_update().get(pk=step.pk)
        if current.status != Status.RUNNING or current.lease_owner != worker_id:
            job_log(job, f"step {step.name}: worker {worker_id} finished after losing its lease "
                         f"(step is now {current.status}); its outcome was discarded", step=step,
                    level=OutputLevel.WARNING)
            return "lost"
        if error:
            status_transition(current, Status.FAILED, error=error, lease_expires_at=None)
            job_log(job, f"step {step.name} failed: {error}", step=step, level=OutputLevel.ERROR)
            if finish:
                job_finish(job, Status.FAILED, f"step {step.name!r} failed")
            return Status.FAILED.value
        if spec is not None and spec.record is not None:
            stored = spec.record(StepContext(job=job, step=current, worker_id=worker_id), result or {})
            result = _json_safe(stored) if stored is not None else result
        status_transition(current, Status.SUCCEEDED, result=result, lease_expires_at=None)
        job_log(job, f"step {step.index + 1} \u00b7 {step.title}: succeeded", step=step)
        return Status.SUCCEEDED.value


def _flush(job: Job, lines: queue.SimpleQueue) -> None:
    while True:
        try:
            step, text, level = lines.get_nowait()
        except queue.Empty:
            return
        job_log(job, text, step=step, level=level)


def _run_group(job: Job, steps: list[Step], worker_id: str) -> str:
    """Run claimed steps at once; record each as it finishes. Returns how it ended."""
    lines: queue.SimpleQueue = queue.SimpleQueue()
    lost = threading.Event()
    keeper = LeaseKeeper([s.pk for s in steps], worker_id, lost)
    specs = {s.pk: _spec_of(job, s) for s in steps}
    contexts = {s.pk: StepContext(job=job, step=s, worker_id=worker_id, lease_lost=lost, lines=lines) for s in steps}
    here = [s for s in steps if specs[s.pk] is not None and specs[s.pk].in_worker_thread]
    threaded = [s for s in steps if s not in here]
    outcomes: dict[int, str] = {}

    def record(step: Step, result: dict | None, error: str) -> None:
        _flush(job, lines)
        outcomes[step.pk] = _record_step_outcome(job, step, worker_id, result, error, spec=specs[step.pk],
                                                 finish=False)
        keeper.release(step.pk)

    keeper.start()
    pool = cf.ThreadPoolExecutor(max_workers=max(1, len(threaded)), thread_name_prefix=f"job-{job.pk}")
    try:
        futures = {pool.submit(_call, job, specs[s.pk], contexts[s.pk]): s for s in threaded}
        for step in here:
            record(step, *_call(job, specs[step.pk], contexts[step.pk]))
        waiting = set(futures)
        while waiting:
            finished, waiting = cf.wait(waiting, timeout=_FLUSH_SECONDS, return_when=cf.FIRST_COMPLETED)
            _flush(job, lines)
            for future in sorted(finished, key=lambda f: futures[f].index):
                record(futures[future], *future.result())
    finally:
        keeper.stop()
        pool.shutdown(wait=False, cancel_futures=True)
        _flush(job, lines)
    failed = [s for s in steps if outcomes.get(s.pk) == Status.FAILED.value]
    if failed:
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=job.pk)
            if job.status not in TERMINAL:
                job_finish(job, Status.FAILED, f"step {failed[0].name!r} failed")
        return Status.FAILED.value
    if any(outcome == "lost" for outcome in outcomes.values()):
        return "lost"
    return Status.SUCCEEDED.value


def _run_one(job: Job, step: Step, worker_id: str) -> str:
    ctx = StepContext(job=job, step=step, worker_id=worker_id)
    keeper = LeaseKeeper([step.pk], worker_id, ctx.lease_lost)
    keeper.start()
    spec = _spec_of(job, step)
    try:
        result, error = _call(job, spec, ctx)
    finally:
        keeper.stop()
    return _record_step_outcome(job, step, worker_id, result, error, spec=spec)


def job_execute(*, job_id: int, worker_id: str) -> str:
    """Run a job's pending steps in order (a group's steps at once), each only after
    claiming it under a lease.

    Returns how it ended here: "succeeded", "failed", "cancelled" (the job's status),
    "held" (another worker holds the next step), "lost" (this worker's lease was taken
    away while a step ran; its outcome was discarded), "missing", or "handed to the
    leader" (the cluster's job, and this node no longer leads: ``placement``).
    """
    from .placement import handed_to_leader

    if handed_to_leader(job_id):
        return "handed to the leader"
    for _ in range(Step.objects.filter(job_id=job_id).count() + 1):
        outcome, job, step = step_claim(job_id, worker_id)
        if outcome != "claimed":
            return outcome
        group = _group_of(job, step)
        if group:
            others = _group_claim(job_id, step, group, worker_id)
            outcome = _run_group(job, [step, *others], worker_id)
        else:
            outcome = _run_one(job, step, worker_id)
        if outcome != Status.SUCCEEDED.value:
            return outcome
    return Job.objects.values_list("status", flat=True).get(pk=job_id)
