"""Where a job runs once the database is the cluster's, shared by every node.

Each node's worker reads its own queue (Redis or the filesystem broker of that node),
so a queue message runs a job on the node that sent it. That is right for a node's own
work (its facts, its preflight, an export written to its data dir): such a job's params
carry the node's address (``job_params``), and only that node's reaper looks after it.
It is wrong for the cluster's work (``registry.RUNS_ON_LEADER``: a bundle signed by the
cluster CA, a join, a removal), which must run on the leader whichever console made the
last vote: a removal notice from a follower is refused by the node being removed, as it
should be. So a node that does not lead sends no message for such a job: it marks the
job ``awaiting_leader`` and says so in the job's output, and the leader's worker takes it
within ``PAM_LEADER_FOLLOW_SECONDS`` (``leader_jobs_take``, run with the leader-follow
task that records who leads). A message that reaches a worker that no longer leads (the
lead moved meanwhile) is handed back the same way before any step is claimed.

On a database of the node's own every job runs where it was made, as before.
"""

from __future__ import annotations

import logging

from django.db import transaction

from . import registry
from .choices import TERMINAL, OutputLevel
from .models import Job

logger = logging.getLogger(__name__)


def _shared_address() -> str:
    from pamportal.nodes.identity import shared_database_address

    return shared_database_address()


def _this_node_leads() -> bool:
    # cluster depends on jobs (it registers kinds); the answer of who leads is cluster's
    from pamportal.cluster.leader_follow import this_node_leads

    return this_node_leads()


def job_params(kind: str, params: dict | None) -> dict:
    """``params`` for a new job: on the shared database a job of a node's own carries
    the node's address (unless the caller named one)."""
    params = dict(params or {})
    address = _shared_address()
    if address and not registry.runs_on_leader(kind):
        params.setdefault("node_address", address)
    return params


def _leader_address() -> str:
    from pamportal.nodes.models import Node, NodeRole

    return Node.objects.filter(role=NodeRole.LEADER).values_list("address", flat=True).first() or "not known"


def handed_to_leader(job_id: int) -> bool:
    """True when this node must not run the job: the database is shared, the job is the
    cluster's and this node does not lead. The job is then marked for the leader (once,
    with a line in its output). False: run it here (and it is no longer awaited)."""
    address = _shared_address()
    if not address:
        return False
    row = Job.objects.filter(pk=job_id).values_list("kind", "awaiting_leader", "status").first()
    if row is None:
        return False
    kind, awaiting, status = row
    if not registry.runs_on_leader(kind) or _this_node_leads():
        if awaiting:
            Job.objects.filter(pk=job_id, awaiting_leader=True).update(awaiting_leader=False)
        return False
    if not awaiting and status not in TERMINAL:
        from .engine import job_log

        with transaction.atomic():
            if Job.objects.filter(pk=job_id, awaiting_leader=False).update(awaiting_leader=True):
                job_log(job_id, f"this node ({address}) does not lead the cluster: the job waits for the "
                                f"leader ({_leader_address()}) to take it", level=OutputLevel.INFO)
    return True


def leader_jobs_take() -> list[int]:
    """The leader: queue on this node every job of the cluster's that a node which does
    not lead left for it. Returns the jobs' ids."""
    address = _shared_address()
    if not address or not _this_node_leads():
        return []
    from .engine import job_enqueue, job_log

    taken = []
    waiting = Job.objects.filter(awaiting_leader=True).exclude(status__in=list(TERMINAL)).order_by("pk")
    for job_id in list(waiting.values_list("pk", flat=True)[:100]):
        with transaction.atomic():
            if not Job.objects.filter(pk=job_id, awaiting_leader=True).update(awaiting_leader=False):
                continue  # another call took it
            job_log(job_id, f"taken by the cluster's leader ({address})")
            job_enqueue(job_id)
        taken.append(job_id)
    if taken:
        logger.info("took %d job(s) of the cluster's left for the leader: %s", len(taken), taken)
    return taken
