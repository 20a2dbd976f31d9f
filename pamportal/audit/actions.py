"""The vocabulary of the audit trail: what happened and how it ended."""

from django.db import models


class AuditAction(models.TextChoices):
    # Setup
    SETUP_TOKEN_ISSUED = "setup.token_issued", "Setup token issued"
    SETUP_TOKEN_ACCEPTED = "setup.token_accepted", "Setup token accepted"
    SETUP_TOKEN_REJECTED = "setup.token_rejected", "Setup token rejected"
    SETUP_TOTP_REJECTED = "setup.totp_rejected", "Setup TOTP code rejected"
    SETUP_ADMIN_CREATED = "setup.admin_created", "First administrator created"
    # Sessions
    LOGIN_SUCCEEDED = "auth.login", "Logged in"
    LOGIN_FAILED = "auth.login_failed", "Login failed"
    LOGIN_LOCKED_OUT = "auth.locked_out", "Locked out"
    LOGOUT = "auth.logout", "Logged out"
    SESSION_EXPIRED = "auth.session_expired", "Session expired"
    TOTP_ENROLLED = "auth.totp_enrolled", "TOTP enrolled"
    TOTP_REJECTED = "auth.totp_rejected", "TOTP code rejected"
    PASSWORD_CHANGED = "auth.password_changed", "Password changed"
    ACCESS_DENIED = "auth.access_denied", "Page refused"
    # User administration
    USER_CREATED = "user.created", "User created"
    USER_DISABLED = "user.disabled", "User disabled"
    USER_ENABLED = "user.enabled", "User enabled"
    USER_RESET = "user.reset", "User reset"
    USER_UNLOCKED = "user.unlocked", "User unlocked"
    # Jobs
    JOB_STARTED = "job.started", "Job started"
    JOB_FINISHED = "job.finished", "Job finished"
    JOB_RERUN = "job.rerun", "Job run again"
    JOB_CANCELLED = "job.cancelled", "Job cancelled"
    STEP_LEASE_EXPIRED = "job.lease_expired", "Step lease expired"
    # The trail itself
    AUDIT_VERIFIED = "audit.verified", "Audit chain verified"


class Outcome(models.TextChoices):
    SUCCEEDED = "succeeded", "Succeeded"
    DENIED = "denied", "Denied"
    FAILED = "failed", "Failed"
