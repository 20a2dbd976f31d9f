"""On the cluster's shared database every node's worker runs the reaper: a node-bound
job (its params name the node) is reaped by that node alone, the cluster's jobs by the
recorded leader alone, so that after a failover the new leader's reaper fails (or
re-queues) what the dead leader was running, and never another node's own work."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from pamportal.jobs.choices import Status
from pamportal.jobs.models import Job, Step
from pamportal.jobs.reaper import leases_reap
from pamportal.nodes.models import Node, NodeRole
from pamportal.replication.database import DatabaseFile, DatabaseHost, write_database_file

A, B = "127.0.0.151", "127.0.0.152"
pytestmark = pytest.mark.django_db


def expired(params: dict) -> Job:
    job = Job.objects.create(kind="test.reaped", title="reaped", status=Status.RUNNING, params=params)
    Step.objects.create(job=job, index=0, name="only", title="only", status=Status.RUNNING, attempts=1,
                        max_attempts=1, lease_owner="a dead worker",
                        lease_expires_at=timezone.now() - timedelta(minutes=5))
    return job


def statuses(*jobs: Job) -> list[str]:
    return [Job.objects.get(pk=job.pk).status for job in jobs]


@pytest.fixture
def cluster(data_dir):  # the test's own data dir: its database.json goes there
    now = timezone.now()
    Node.objects.create(pk=1, address=A, role=NodeRole.LEADER, ntp_servers=["ntp"], finalised_at=now)
    Node.objects.create(pk=2, address=B, role=NodeRole.FOLLOWER, ntp_servers=["ntp"], finalised_at=now)
    jobs = {"cluster": expired({"request_id": 1}), "a": expired({"node_address": A}),
            "b": expired({"node_address": B})}
    return jobs


def shared_as(address: str) -> None:
    write_database_file(settings.PAM_DATA_DIR, DatabaseFile(hosts=(DatabaseHost(host=A, port=5432),), member="m",
                                                            node_address=address))


def test_a_follower_reaps_its_own_jobs_only(cluster):
    shared_as(B)
    assert leases_reap()["failed"] == 1
    assert statuses(cluster["cluster"], cluster["a"], cluster["b"]) == ["running", "running", "failed"]


def test_the_leader_reaps_the_clusters_jobs_and_its_own(cluster):
    shared_as(A)
    assert leases_reap()["failed"] == 2
    assert statuses(cluster["cluster"], cluster["a"], cluster["b"]) == ["failed", "failed", "running"]


def test_after_a_failover_the_new_leader_reaps_what_the_dead_leader_ran(cluster):
    Node.objects.filter(address=A).update(role=NodeRole.FOLLOWER)
    Node.objects.filter(address=B).update(role=NodeRole.LEADER)
    shared_as(B)
    leases_reap()
    assert statuses(cluster["cluster"], cluster["a"], cluster["b"]) == ["failed", "running", "failed"]
    output = " ".join(Job.objects.get(pk=cluster["cluster"].pk).output.values_list("text", flat=True))
    assert "a dead worker stopped renewing its lease" in output


def test_on_a_database_of_its_own_every_job_is_reaped(cluster):
    assert leases_reap()["failed"] == 3
