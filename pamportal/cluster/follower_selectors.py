"""Reads about this node joining a cluster as a follower."""

from __future__ import annotations

from pamportal.jobs.models import Job
from pamportal.nodes.identity import own_rows

from .follower_models import FollowerJoin, JoinState


def join_current() -> FollowerJoin | None:
    """The newest join this node started (finished or not), or None."""
    return own_rows(FollowerJoin.objects, "own_address").select_related("job").order_by("-pk").first()


def joining_cluster() -> bool:
    """This node chose to join a cluster (and that join has not failed)."""
    join = join_current()
    return join is not None and join.state != JoinState.FAILED


def join_job(join: FollowerJoin | None) -> Job | None:
    """The job following the join on the leader (its newest round), if any."""
    return join.job if join is not None and join.job_id else None
