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


# --- after the administrator: how far the node's setup has come ------------------------
NODE_STEPS = ("node", "preflight", "licence", "mek", "finalise")


def node_setup_due(node=None) -> str | None:
    """The wizard step due after the administrator exists (None: setup is finalised).
    Read from the database, so a refresh or a later visit resumes there."""
    from pamportal.nodes.selectors import node_current

    node = node if node is not None else node_current()
    if node.finalised_at is not None:
        return None
    if not node.address or not node.ntp_servers:
        return "node"
    if node.preflight_passed_at is None:
        return "preflight"
    if node.licence_done_at is None:
        return "licence"
    if node.mek_confirmed_at is None:
        return "mek"
    return "finalise"
