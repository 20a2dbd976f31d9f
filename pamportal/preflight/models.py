"""Preflight runs, the outcome of each check in a run, and accepted warnings."""

from django.conf import settings
from django.db import models

from .checks import FAILING, CheckStatus, Severity


class PreflightRun(models.Model):
    job = models.OneToOneField("jobs.Job", on_delete=models.PROTECT, related_name="preflight_run")
    context = models.JSONField(default=dict)  # the PreflightContext the checks ran against
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    summary = models.JSONField(default=dict, blank=True)  # counts by status, and "blocking"

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Preflight run #{self.pk}"


class CheckOutcome(models.Model):
    run = models.ForeignKey(PreflightRun, on_delete=models.CASCADE, related_name="outcomes")
    position = models.PositiveIntegerField()  # catalogue order
    check_id = models.CharField(max_length=64)
    title = models.CharField(max_length=200)
    severity = models.CharField(max_length=8, choices=Severity.choices)
    can_accept = models.BooleanField(default=False)  # the catalogue's rule, copied at run time
    status = models.CharField(max_length=8, choices=CheckStatus.choices, default=CheckStatus.PENDING)
    measured = models.CharField(max_length=255, blank=True)
    threshold = models.CharField(max_length=255, blank=True)
    message = models.TextField(blank=True)
    remediation = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [models.UniqueConstraint(fields=["run", "check_id"], name="preflight_outcome_unique_check")]

    def __str__(self) -> str:
        return f"{self.check_id}: {self.status}"

    @property
    def failing(self) -> bool:
        return self.status in FAILING

    @property
    def acceptable(self) -> bool:
        """Could be accepted with a reason (whether or not it already is)."""
        return self.can_accept and self.failing and self.severity == Severity.WARNING

    @property
    def accepted(self) -> bool:
        return hasattr(self, "acceptance")

    @property
    def blocking(self) -> bool:
        """An error that fails, a warning not accepted, or a check that has not run."""
        if self.status == CheckStatus.PENDING:
            return True
        if not self.failing:
            return False
        return not (self.acceptable and self.accepted)


class WarningAcceptance(models.Model):
    outcome = models.OneToOneField(CheckOutcome, on_delete=models.CASCADE, related_name="acceptance")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    reason = models.TextField()
    accepted_at = models.DateTimeField()

    class Meta:
        ordering = ["-accepted_at"]

    def __str__(self) -> str:
        return f"{self.outcome.check_id} accepted by {self.user}"
