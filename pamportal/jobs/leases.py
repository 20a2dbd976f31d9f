"""Step leases: a worker holds the steps it runs for a lease length at a time, and a
thread of the worker renews them while they run; ``reaper`` acts on expired ones."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone

from .choices import Status
from .models import Step

logger = logging.getLogger(__name__)


def lease_length() -> timedelta:
    return timedelta(seconds=float(settings.PAM_JOB_LEASE_SECONDS))


def lease_renew(*, step_id: int, worker_id: str, now: datetime | None = None) -> bool:
    """Extend the lease of a step this worker still holds; False when it holds it no more."""
    return leases_renew(step_ids=[step_id], worker_id=worker_id, now=now) == 1


def leases_renew(*, step_ids: list[int], worker_id: str, now: datetime | None = None) -> int:
    """Extend the leases of the steps this worker still holds; how many it still holds."""
    now = now or timezone.now()
    return Step.objects.filter(pk__in=step_ids, status=Status.RUNNING, lease_owner=worker_id).update(
        lease_expires_at=now + lease_length()
    )


class LeaseKeeper(threading.Thread):
    """Renews the leases of the steps a worker runs, every third of the lease length."""

    def __init__(self, step_ids: list[int], worker_id: str, lost: threading.Event):
        super().__init__(name=f"lease-{step_ids[0]}", daemon=True)
        self.step_ids, self.worker_id, self.lost = set(step_ids), worker_id, lost
        self.guard = threading.Lock()
        self.stopping = threading.Event()
        self.interval = max(0.05, lease_length().total_seconds() / 3)

    def release(self, step_id: int) -> None:
        with self.guard:
            self.step_ids.discard(step_id)

    def run(self) -> None:
        try:
            while not self.stopping.wait(self.interval):
                with self.guard:
                    held = sorted(self.step_ids)
                if not held:
                    continue
                try:
                    if leases_renew(step_ids=held, worker_id=self.worker_id) < len(held):
                        logger.warning("worker %s lost the lease of steps among %s", self.worker_id, held)
                        self.lost.set()
                        return
                except Exception:  # a busy database: try again at the next interval
                    logger.exception("renewing the leases of steps %s failed", held)
                    close_old_connections()
        finally:
            connections.close_all()  # this thread's connections only

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=max(5.0, self.interval * 2))
