"""The audit trail: an append-only, hash-chained table of events."""

from django.conf import settings
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

    # The labels from a dict built once: Django's own get_FOO_display builds a dict of
    # the choices on every call, and the audit page calls both twice per row.
    def get_action_display(self) -> str:
        return _ACTION_LABELS.get(self.action, self.action)

    def get_outcome_display(self) -> str:
        return _OUTCOME_LABELS.get(self.outcome, self.outcome)


_ACTION_LABELS = dict(AuditAction.choices)
_OUTCOME_LABELS = dict(Outcome.choices)


class AuditHead(models.Model):
    """One row: the chain's last position and hash, locked while an event is appended."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    position = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64)


# --- Audit reports: signing key, checkpoints, chain status, exports, SIEM ----------------
class AuditSigningKey(models.Model):
    """The node's Ed25519 key that signs checkpoints and export manifests.

    The public part is always here. The private part is in a 0600 file in the data dir
    until the node has a MEK, then sealed under it here (``sealed_private``) and the
    file is removed (``signing.signing_key_load`` makes that move).
    """

    key_id = models.CharField(max_length=32, primary_key=True)  # hex of SHA-256(public)[:16]
    public_key = models.CharField(max_length=64)  # base64 of the 32 raw bytes
    sealed_private = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]


class AuditCheckpoint(models.Model):
    """A signed statement: the chain's head was (position, hash) at ``time``."""

    class Reason(models.TextChoices):
        EVENTS = "events", "Every N events"
        PERIODIC = "periodic", "Periodic"
        MANUAL = "manual", "On request"

    position = models.BigIntegerField(db_index=True)
    hash = models.CharField(max_length=64)
    time = models.DateTimeField()
    key_id = models.CharField(max_length=32)
    signature = models.CharField(max_length=128)  # base64
    reason = models.CharField(max_length=16, choices=Reason.choices)

    class Meta:
        ordering = ["-position", "-time"]


class AuditChainStatus(models.Model):
    """One row: how far the chain was last verified, and where it broke if it did."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    checked_at = models.DateTimeField(null=True, blank=True)
    full_checked_at = models.DateTimeField(null=True, blank=True)
    verified_position = models.BigIntegerField(default=0)
    verified_hash = models.CharField(max_length=64, default="0" * 64)
    ok = models.BooleanField(default=True)
    first_bad_position = models.BigIntegerField(null=True, blank=True)
    reason = models.TextField(blank=True)


class AuditExport(models.Model):
    class Format(models.TextChoices):
        CSV = "csv", "CSV"
        JSONL = "jsonl", "JSON Lines"
        PDF = "pdf", "PDF report"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Writing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_name = models.CharField(max_length=150)
    format = models.CharField(max_length=8, choices=Format.choices)
    filters = models.JSONField(default=dict, blank=True)
    upto_position = models.BigIntegerField()
    expected_count = models.BigIntegerField(default=0)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    file_name = models.CharField(max_length=200, blank=True)
    size = models.BigIntegerField(default=0)
    row_count = models.BigIntegerField(default=0)
    manifest = models.TextField(blank=True)  # the signed manifest, as handed out
    error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    @property
    def is_ready(self) -> bool:
        return self.state == self.State.READY


class SiemCollector(models.Model):
    """One row: the syslog collector events are forwarded to, and how far it got."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    host = models.CharField(max_length=253, blank=True)
    port = models.PositiveIntegerField(default=6514)
    ca_pem = models.TextField(blank=True)
    enabled = models.BooleanField(default=False)
    cursor = models.BigIntegerField(default=0)  # last position the collector has been sent
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)


class AuditRepeatCounter(models.Model):
    """Anonymous refusals of one kind from one source address in the current window:
    how many were recorded one by one, and how many were only counted (written to the
    trail as one summary event when the window is over). See ``repeats``."""

    source = models.CharField(max_length=64)
    kind = models.CharField(max_length=128)
    action = models.CharField(max_length=64)
    window_start = models.DateTimeField(db_index=True)
    recorded = models.PositiveIntegerField(default=0)
    suppressed = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "kind"], name="audit_repeat_counter_source_kind")]

    def __str__(self) -> str:
        return f"{self.kind} from {self.source or 'unknown'}: {self.recorded} recorded, {self.suppressed} counted"
