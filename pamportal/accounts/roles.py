"""Roles and what each may do. Every view names the capability it needs."""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    APPROVER = "approver", "Approver"
    ADMINISTRATOR = "administrator", "Administrator"


# Roles that must enrol TOTP before they can do anything else.
TOTP_REQUIRED = frozenset({Role.APPROVER, Role.ADMINISTRATOR})

_ALL = frozenset(Role)
CAPABILITIES: dict[str, frozenset[Role]] = {
    "node.view": _ALL,
    "jobs.view": _ALL,
    "jobs.run": frozenset({Role.OPERATOR, Role.ADMINISTRATOR}),
    "users.manage": frozenset({Role.ADMINISTRATOR}),
    "audit.view": frozenset({Role.ADMINISTRATOR}),
}


def has_capability(user, capability: str) -> bool:
    if capability not in CAPABILITIES:
        raise KeyError(f"unknown capability {capability!r}")
    return bool(user.is_authenticated and user.is_active and user.role in CAPABILITIES[capability])


def capabilities_of(user) -> set[str]:
    return {name for name in CAPABILITIES if has_capability(user, name)}
