"""A worker killed (SIGKILL) in the middle of a step: once its lease runs out the
reaper fails the step with the reason in the job's output, nothing stays "running",
and the job can be run again and succeeds. Real processes: a node with its own
database and queue (SQLite + filesystem broker by default; PostgreSQL + Redis when
DATABASE_URL and CELERY_BROKER_URL are set), workers running Celery beat."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime

import pytest

from tests.support.node import NodeEnv, wait_for

pytestmark = pytest.mark.processes

LEASE_SECONDS = 3

STATE = """
import json
from pamportal.jobs.models import Job
job = Job.objects.get(pk={pk})
print(json.dumps({{
    "status": job.status, "runs": job.runs,
    "steps": [
        {{"name": s.name, "status": s.status, "attempts": s.attempts, "owner": s.lease_owner,
          "expires": s.lease_expires_at.isoformat() if s.lease_expires_at else None}}
        for s in job.steps.order_by("index")
    ],
    "output": [line.text for line in job.output.order_by("counter")],
}}))
"""


def last_line(out: str) -> str:
    return [line for line in out.splitlines() if line.strip()][-1]


def start_worker(node: NodeEnv, name: str, concurrency: int) -> object:
    """As NodeEnv.start_worker, with a chosen pool size (two: the reaper keeps running
    on the second process while the first holds the slow step)."""
    args = [
        sys.executable, "-m", "celery", "-A", "pamportal", "worker", "--loglevel", "INFO",
        "--concurrency", str(concurrency), "--hostname", f"{name}-{uuid.uuid4().hex[:6]}@%h", "-Q", node.name,
        "--beat", "--schedule", str(node.data_dir / f"beat-{name}"),
    ]
    return node.spawn(args, name)


def reaps_done(node: NodeEnv, log_name: str) -> int:
    return sum(
        1 for line in node.log(log_name).splitlines()
        if "pamportal.jobs.tasks.reap_expired_leases[" in line and " succeeded in " in line
    )


def runs_ended(node: NodeEnv, log_name: str, outcome: str) -> int:
    """How many run_job tasks the worker finished with ``outcome`` (Celery logs the return value)."""
    return sum(
        1 for line in node.log(log_name).splitlines()
        if "pamportal.jobs.tasks.run_job[" in line and line.rstrip().endswith(f"'{outcome}'")
    )


def test_killed_worker_leaves_no_step_running_and_the_job_can_run_again(node_env: NodeEnv):
    node_env.env.update(
        PAM_JOB_PLUGINS="tests.jobs.slow_job",
        PAM_JOB_LEASE_SECONDS=str(LEASE_SECONDS),
        PAM_JOB_REAPER_INTERVAL="1",
    )
    node_env.manage("migrate", "--noinput")

    def state(pk: int) -> dict:
        return json.loads(last_line(node_env.shell(STATE.format(pk=pk))))

    def logs() -> str:
        return "\n".join(f"--- {n} ---\n{node_env.log(n)[-4000:]}" for n in ("w1", "w2"))

    w1 = start_worker(node_env, "w1", concurrency=2)
    job_id = int(last_line(node_env.shell(
        "from pamportal.jobs.services import job_create\n"
        "print(job_create(kind='test.slow').pk)"
    )))

    try:
        running = wait_for(
            lambda: (s := state(job_id))["steps"][0]["status"] == "running" and s,
            timeout=60, interval=0.5, what="the slow step to be running on w1",
        )
    except AssertionError:
        raise AssertionError(f"step never started:\n{logs()}") from None
    hold = running["steps"][0]
    assert running["status"] == "running" and hold["attempts"] == 1 and hold["owner"].startswith("w1-")
    assert any("holding until" in line for line in running["output"])

    # The queue delivers the job a second time while w1 holds the step: the second
    # pool process finds the step held under a live lease and runs nothing.
    node_env.shell(f"from pamportal.jobs.tasks import run_job\nrun_job.delay({job_id})")
    try:
        wait_for(lambda: runs_ended(node_env, "w1", "held"), timeout=30, interval=0.5, what="the duplicate delivery")
    except AssertionError:
        raise AssertionError(f"duplicate delivery not seen:\n{logs()}") from None
    assert state(job_id)["steps"][0]["attempts"] == 1

    # While w1 lives it renews the lease: the step outlives its first lease, and the
    # reaper (running every second on w1's second pool process) leaves it alone.
    first_expiry = datetime.fromisoformat(hold["expires"])
    reaps_before = reaps_done(node_env, "w1")
    try:
        alive = wait_for(
            lambda: (s := state(job_id))["steps"][0]["status"] == "running"
            and (datetime.fromisoformat(s["steps"][0]["expires"]) - first_expiry).total_seconds() > LEASE_SECONDS + 0.5
            and reaps_done(node_env, "w1") >= reaps_before + 3
            and s,
            timeout=30, interval=0.5, what="the lease to be renewed past its first expiry",
        )
    except AssertionError:
        raise AssertionError(f"lease not renewed while reaping:\n{state(job_id)}\n{logs()}") from None
    assert alive["steps"][0]["attempts"] == 1 and alive["steps"][0]["owner"] == hold["owner"]

    NodeEnv.kill(w1)  # SIGKILL to the whole group, mid-step
    assert state(job_id)["steps"][0]["status"] == "running"  # the database does not know yet

    start_worker(node_env, "w2", concurrency=1)
    try:
        failed = wait_for(
            lambda: (s := state(job_id))["status"] == "failed" and s,
            timeout=30, interval=0.5, what="the reaper to fail the abandoned step",
        )
    except AssertionError:
        raise AssertionError(f"the abandoned step was not reaped:\n{state(job_id)}\n{logs()}") from None
    assert [s["status"] for s in failed["steps"]] == ["failed", "skipped"]
    assert not any(s["status"] == "running" for s in failed["steps"])
    reason = [line for line in failed["output"] if "stopped renewing its lease" in line]
    assert reason, failed["output"]
    assert f"worker {hold['owner']} stopped renewing its lease at" in reason[0]
    assert "step 'hold' failed" in reason[0]

    (node_env.data_dir / "release").touch()
    node_env.shell(
        "from pamportal.jobs.services import job_rerun\n"
        f"job_rerun(job_id={job_id}, user=None)"
    )
    try:
        done = wait_for(
            lambda: (s := state(job_id))["status"] == "succeeded" and s,
            timeout=30, interval=0.5, what="the job run again to succeed",
        )
    except AssertionError:
        raise AssertionError(f"the job run again did not succeed:\n{state(job_id)}\n{logs()}") from None
    assert done["runs"] == 2
    assert [(s["status"], s["attempts"]) for s in done["steps"]] == [("succeeded", 1), ("succeeded", 1)]
    assert done["steps"][0]["owner"].startswith("w2-")
    assert "second step ran" in done["output"]
    assert any("stopped renewing its lease" in line for line in done["output"])  # the log keeps the history

    # A late redelivery of the finished job (Redis hands back a dead worker's unacked
    # message after its visibility timeout) changes nothing.
    runs_before = runs_ended(node_env, "w2", "succeeded")
    node_env.shell(f"from pamportal.jobs.tasks import run_job\nrun_job.delay({job_id})")
    wait_for(lambda: runs_ended(node_env, "w2", "succeeded") > runs_before, timeout=30, interval=0.5,
             what="the late redelivery")
    assert state(job_id) == done
