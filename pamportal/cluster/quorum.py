"""Quorum arithmetic over etcd's member list: pure functions the removal checks, the
removal job and the cluster page share."""

from __future__ import annotations

from collections.abc import Iterable

from .etcd import Member


def quorum(voting_members: int) -> int:
    """Votes needed to commit in a configuration of ``voting_members`` voters."""
    if voting_members < 0:
        raise ValueError("negative member count")
    return voting_members // 2 + 1


def failure_tolerance(voting_members: int) -> int:
    """How many voting members may fail with the cluster still available: (n-1)//2."""
    if voting_members < 0:
        raise ValueError("negative member count")
    return max(0, (voting_members - 1) // 2)


def quorum_ok_after_remove(
    members: Iterable[Member], member_id: int, healthy_ids: Iterable[int] | None = None
) -> bool:
    """May ``member_id`` be removed without losing quorum?

    Removing a learner never affects quorum. For a voter, the change itself must be
    committed by the *current* configuration, so the healthy voters that remain must
    still reach the current quorum. ``healthy_ids`` are the members known to be
    healthy; when omitted, every started voter counts as healthy. An id that is not
    a member changes nothing (True; etcd will answer "member not found").

    3 healthy voters, remove one -> 2 >= 2: yes. 3 voters with one dead, remove the
    dead one -> yes; remove a healthy one -> 1 < 2: no. 2 voters -> no. 1 voter -> no.
    """
    members = list(members)
    target = next((m for m in members if m.id == member_id), None)
    if target is None or target.is_learner:
        return True
    voters = [m for m in members if m.is_voter]
    if healthy_ids is None:
        healthy = {m.id for m in voters if m.started}
    else:
        healthy = set(healthy_ids)
    remaining_healthy = sum(1 for m in voters if m.id != member_id and m.id in healthy)
    return remaining_healthy >= quorum(len(voters))
