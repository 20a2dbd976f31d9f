"""Reads about first-boot state."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction

from .models import SetupToken


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
    from pamportal.audit.models import AuditEvent

    return AuditEvent.objects.filter(
        action=AuditAction.SETUP_TOKEN_REJECTED, source_ip=source_ip, time__gte=timezone.now() - window
    ).count()
