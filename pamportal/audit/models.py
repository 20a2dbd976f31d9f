"""The audit trail: an append-only, hash-chained table of events."""

from django.db import models

from .actions import AuditAction, Outcome


class AuditEvent(models.Model):
    position = models.BigIntegerField(primary_key=True)
    time = models.DateTimeField(db_index=True)
    actor_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    actor_name = models.CharField(max_length=150)
    source_ip = models.CharField(max_length=64, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=64, choices=AuditAction.choices, db_index=True)
    target = models.CharField(max_length=512, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, db_index=True)
    details = models.TextField(default="{}")  # canonical JSON, hashed as stored
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["position"]

    def __str__(self) -> str:
        return f"#{self.position} {self.action} {self.outcome}"


class AuditHead(models.Model):
    """One row: the chain's last position and hash, locked while an event is appended."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    position = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64)
