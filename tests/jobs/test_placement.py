"""Where a job runs on the cluster's shared database (``jobs.placement``): the cluster's
jobs (bundles, joins, removals) on whichever node leads, whatever console made them; a
node's own jobs on that node, their params naming it. On a database of the node's own,
every job runs where it was made."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.utils import timezone

from pamportal.jobs import placement, registry
from pamportal.jobs.choices import Status
from pamportal.jobs.engine import job_execute
from pamportal.jobs.models import Job
from pamportal.jobs.registry import RUNS_ON_LEADER, JobKind, StepSpec, register
from pamportal.jobs.services import job_create
from pamportal.nodes.models import Node, NodeRole
from pamportal.replication.database import DatabaseFile, DatabaseHost, write_database_file

A, B = "127.0.0.153", "127.0.0.154"
LEADER_KIND, NODE_KIND = "test.placement.cluster", "test.placement.node"
pytestmark = pytest.mark.django_db
RAN: list[str] = []


def _step(ctx):
    RAN.append(ctx.job.kind)
    return {}


register(JobKind(name=LEADER_KIND, title="the cluster's", runs_on=RUNS_ON_LEADER,
                 steps=(StepSpec("only", "only", _step),)))
register(JobKind(name=NODE_KIND, title="a node's own", steps=(StepSpec("only", "only", _step),)))


@pytest.fixture
def sent(monkeypatch):
    """The queue: which jobs this node sent a message for."""
    from pamportal.jobs import tasks

    messages: list[int] = []
    monkeypatch.setattr(tasks.run_job, "delay", messages.append)
    RAN.clear()
    return messages


@pytest.fixture
def cluster(data_dir):
    now = timezone.now()
    Node.objects.create(pk=1, address=A, role=NodeRole.LEADER, ntp_servers=["ntp"], finalised_at=now)
    Node.objects.create(pk=2, address=B, role=NodeRole.FOLLOWER, ntp_servers=["ntp"], finalised_at=now)


def shared_as(address: str) -> None:
    write_database_file(settings.PAM_DATA_DIR, DatabaseFile(hosts=(DatabaseHost(host=A, port=5432),), member="m",
                                                            node_address=address))


def create(kind: str, callbacks) -> Job:
    with callbacks(execute=True):
        job = job_create(kind=kind, params={"request_id": 7})
    return Job.objects.get(pk=job.pk)


def output(job: Job) -> str:
    return "\n".join(job.output.values_list("text", flat=True))


def test_a_clusters_job_made_on_a_follower_waits_for_the_leader(cluster, sent, django_capture_on_commit_callbacks):
    shared_as(B)
    job = create(LEADER_KIND, django_capture_on_commit_callbacks)
    assert sent == [] and job.awaiting_leader and job.status == Status.PENDING
    assert "node_address" not in job.params  # the cluster's: whichever node leads
    assert f"this node ({B}) does not lead the cluster: the job waits for the leader ({A}) to take it" in output(job)

    # the follower's worker finds nothing to take; the leader's takes it, once
    assert placement.leader_jobs_take() == []
    shared_as(A)
    with django_capture_on_commit_callbacks(execute=True):
        assert placement.leader_jobs_take() == [job.pk]
    assert sent == [job.pk]
    job.refresh_from_db()
    assert not job.awaiting_leader and f"taken by the cluster's leader ({A})" in output(job)
    assert placement.leader_jobs_take() == []
    assert job_execute(job_id=job.pk, worker_id="leader-worker") == "succeeded" and RAN == [LEADER_KIND]


def test_a_nodes_own_job_runs_where_it_was_made_and_names_the_node(cluster, sent, django_capture_on_commit_callbacks):
    shared_as(B)
    job = create(NODE_KIND, django_capture_on_commit_callbacks)
    assert sent == [job.pk] and not job.awaiting_leader
    assert job.params == {"request_id": 7, "node_address": B}


def test_on_the_leader_the_clusters_job_is_sent_at_once(cluster, sent, django_capture_on_commit_callbacks):
    shared_as(A)
    job = create(LEADER_KIND, django_capture_on_commit_callbacks)
    assert sent == [job.pk] and not job.awaiting_leader and "waits for the leader" not in output(job)


def test_a_message_that_reaches_a_worker_no_longer_leading_is_handed_back(cluster, sent,
                                                                         django_capture_on_commit_callbacks):
    shared_as(A)
    job = create(LEADER_KIND, django_capture_on_commit_callbacks)
    assert sent == [job.pk]
    # the lead moves to B before A's worker takes the message
    Node.objects.filter(address=A).update(role=NodeRole.FOLLOWER)
    Node.objects.filter(address=B).update(role=NodeRole.LEADER)
    assert job_execute(job_id=job.pk, worker_id="old-leader-worker") == "handed to the leader"
    job.refresh_from_db()
    assert RAN == [] and job.awaiting_leader and job.steps.get().status == Status.PENDING
    assert f"the job waits for the leader ({B})" in output(job)
    # handed back once: a second delivery adds no second line
    assert job_execute(job_id=job.pk, worker_id="old-leader-worker") == "handed to the leader"
    assert output(job).count("waits for the leader") == 1
    shared_as(B)
    with django_capture_on_commit_callbacks(execute=True):
        assert placement.leader_jobs_take() == [job.pk]
    assert job_execute(job_id=job.pk, worker_id="new-leader-worker") == "succeeded" and RAN == [LEADER_KIND]


def test_a_finished_job_is_never_taken(cluster, sent, django_capture_on_commit_callbacks):
    shared_as(B)
    job = create(LEADER_KIND, django_capture_on_commit_callbacks)
    Job.objects.filter(pk=job.pk).update(status=Status.CANCELLED)
    shared_as(A)
    assert placement.leader_jobs_take() == [] and sent == []


def test_on_a_database_of_its_own_every_job_runs_where_it_was_made(cluster, sent, django_capture_on_commit_callbacks):
    Node.objects.filter(pk=1).update(role=NodeRole.FOLLOWER)  # even a row that says follower
    job = create(LEADER_KIND, django_capture_on_commit_callbacks)
    assert sent == [job.pk] and not job.awaiting_leader and job.params == {"request_id": 7}
    assert placement.leader_jobs_take() == []


def test_the_clusters_kinds_run_on_the_leader_and_a_nodes_own_on_the_node():
    import pamportal.cluster.jobs  # noqa: F401 — registers the kinds
    from pamportal.cluster.follower import FOLLOW_KIND
    from pamportal.cluster.removal import REMOVE_KIND
    from pamportal.cluster.requests import JOIN_KIND, LEADERSHIP_KIND
    from pamportal.nodes.facts import KIND as FACTS_KIND

    assert [registry.runs_on_leader(k) for k in ("cluster.bundle", JOIN_KIND, REMOVE_KIND)] == [True] * 3
    # a change of leader must run when the leader is dead; a joining node's side and a
    # node's facts are that node's
    assert [registry.runs_on_leader(k) for k in (LEADERSHIP_KIND, FOLLOW_KIND, FACTS_KIND)] == [False] * 3
