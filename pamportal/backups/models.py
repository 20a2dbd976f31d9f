"""The node's record of each backup it took: where the archive is, what it holds (a
summary of its manifest) and whether the restore proof passed."""

from __future__ import annotations

from django.db import models


class BackupState(models.TextChoices):
    RUNNING = "running", "Running"
    PROVEN = "proven", "Proven"
    FAILED = "failed", "Failed"


class Backup(models.Model):
    state = models.CharField(max_length=16, choices=BackupState.choices, default=BackupState.RUNNING)
    # The node that wrote the archive (its address): the archive lives in that node's backup dir.
    node_address = models.CharField(max_length=253, blank=True)
    archive_name = models.CharField(max_length=255, blank=True)
    size = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    cluster_id = models.CharField(max_length=64, blank=True)
    database_engine = models.CharField(max_length=16, blank=True)
    audit_position = models.BigIntegerField(null=True, blank=True)
    audit_hash = models.CharField(max_length=64, blank=True)
    manifest_summary = models.JSONField(default=dict, blank=True)
    proof_ok = models.BooleanField(null=True)
    proof_reason = models.TextField(blank=True)
    proof_details = models.JSONField(default=dict, blank=True)
    failure_reason = models.TextField(blank=True)
    created_by_name = models.CharField(max_length=150, blank=True)
    job_id = models.BigIntegerField(null=True, blank=True)
    started_at = models.DateTimeField()
    written_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    write_seconds = models.FloatField(null=True, blank=True)
    proof_seconds = models.FloatField(null=True, blank=True)
    # Set when retention removed the archive (the row stays, as history).
    pruned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"backup {self.archive_name or self.pk} ({self.state})"
