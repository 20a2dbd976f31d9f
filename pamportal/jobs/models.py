"""Jobs made of ordered steps, with ordered output lines and step leases."""

from django.conf import settings
from django.db import models
from django.utils import timezone

from .choices import TERMINAL, OutputLevel, Status


class Job(models.Model):
    kind = models.CharField(max_length=64, db_index=True)
    title = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    params = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    runs = models.PositiveIntegerField(default=1)
    output_counter = models.PositiveIntegerField(default=0)
    # A job of the cluster's (``registry.RUNS_ON_LEADER``) made on a node that does not
    # lead: no queue message was sent; the leader's worker takes it (``placement``).
    awaiting_leader = models.BooleanField(default=False, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.title} (#{self.pk})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


class Step(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    name = models.CharField(max_length=64)
    title = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=1)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["job", "index"]
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="jobs_step_unique_index")]

    def __str__(self) -> str:
        return f"{self.job_id}.{self.index} {self.name}"

    @property
    def duration(self):
        """How long the step ran (so far, while running); None before it started."""
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


class OutputLine(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="output")
    step = models.ForeignKey(Step, null=True, blank=True, on_delete=models.CASCADE, related_name="output")
    counter = models.PositiveIntegerField()
    time = models.DateTimeField(auto_now_add=True)
    level = models.CharField(max_length=8, choices=OutputLevel.choices, default=OutputLevel.INFO)
    text = models.TextField()

    class Meta:
        ordering = ["job", "counter"]
        constraints = [models.UniqueConstraint(fields=["job", "counter"], name="jobs_output_unique_counter")]
