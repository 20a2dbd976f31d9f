"""Reads about first-boot state: whether setup is complete, the setup token, and the
wizard's preflight run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction
from pamportal.audit.models import AuditEvent
from pamportal.crypto.secrets import secret_digest
from pamportal.jobs.choices import TERMINAL
from pamportal.nodes.models import Node
from pamportal.preflight.models import PreflightRun

from .models import SetupToken

TOKEN_FILE_NAME = "setup-token"


def setup_is_complete() -> bool:
    """Setup is complete once an active administrator exists."""
    return get_user_model().objects.filter(role=Role.ADMINISTRATOR, is_active=True).exists()


def setup_token_usable(token_id: int | None) -> bool:
    """Still unused, not replaced and not expired (the wizard re-checks at each step)."""
    if token_id is None:
        return False
    return SetupToken.objects.filter(
        pk=token_id, used_at__isnull=True, superseded_at__isnull=True, expires_at__gt=timezone.now()
    ).exists()


def setup_token_rejections_from(source_ip: str, window: timedelta) -> int:
    """Setup tokens refused for this address recently (brute-force limit)."""
    return AuditEvent.objects.filter(
        action=AuditAction.SETUP_TOKEN_REJECTED, source_ip=source_ip, time__gte=timezone.now() - window
    ).count()


# --- the token as the console prints it ---------------------------------------------------
def token_file() -> Path:
    return Path(settings.PAM_DATA_DIR) / TOKEN_FILE_NAME


def normalise_token(token: str) -> str:
    """Case, spaces and dashes do not matter when the operator types the token."""
    return re.sub(r"[^A-Z2-7]", "", (token or "").upper())


def token_hash(token: str) -> str:
    return secret_digest(normalise_token(token))


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime


def setup_token_current() -> IssuedToken | None:
    """The token in the file, if it is the stored, unused, unexpired one."""
    try:
        token = token_file().read_text().strip()
    except (FileNotFoundError, PermissionError, UnicodeDecodeError):
        return None
    row = SetupToken.objects.filter(
        token_hash=token_hash(token), used_at__isnull=True, superseded_at__isnull=True, expires_at__gt=timezone.now()
    ).first()
    return IssuedToken(token=token, expires_at=row.expires_at) if row else None


# --- the wizard's preflight run -------------------------------------------------------------
def setup_preflight_run(node: Node) -> PreflightRun | None:
    """The preflight run the wizard started for this node, or None."""
    if node.preflight_run_id is None:
        return None
    return PreflightRun.objects.select_related("job").filter(pk=node.preflight_run_id).first()


def preflight_finished(run: PreflightRun) -> bool:
    return run.job.status in TERMINAL
