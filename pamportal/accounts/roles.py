"""Roles and what each may do. Every view names the capability it needs."""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    APPROVER = "approver", "Approver"
    ADMINISTRATOR = "administrator", "Administrator"
    AUDITOR = "auditor", "Auditor"


# Roles that must enrol TOTP before they can do anything else: every role that can
# change anything (or export the trail). Only a viewer may log in with a password only.
TOTP_REQUIRED = frozenset({Role.OPERATOR, Role.APPROVER, Role.ADMINISTRATOR, Role.AUDITOR})

_ALL = frozenset(Role)
_RUNNERS = frozenset({Role.OPERATOR, Role.ADMINISTRATOR})
_ADMIN = frozenset({Role.ADMINISTRATOR})
_AUDIT = frozenset({Role.ADMINISTRATOR, Role.AUDITOR})
CAPABILITIES: dict[str, frozenset[Role]] = {
    # Reading the node's state.
    "node.view": _ALL,
    "jobs.view": _ALL,
    "licence.view": _ALL,
    "certificates.view": _ALL,
    "preflight.view": _ALL,
    # Running things.
    "jobs.run": _RUNNERS,
    "preflight.run": _RUNNERS,
    "preflight.accept": _RUNNERS,  # accept a warning, with a written reason
    # Administration.
    "users.manage": _ADMIN,
    "licence.manage": _ADMIN,
    "mek.check": _ADMIN,
    "setup.finalise": _ADMIN,
    "audit.configure": _ADMIN,  # checkpoints, SIEM forwarding
    # The audit trail: administrators and the read-only auditor.
    "audit.view": _AUDIT,
    "audit.export": _AUDIT,
    # Cluster formation.
    "cluster.view": _ALL,
    "bundles.manage": _RUNNERS,
    "joins.vote": frozenset({Role.APPROVER}),
    "cluster.policy": _ADMIN,
    "cluster.remove": _RUNNERS,
    # Backups: operators see the page and may start one; only administrators take an
    # archive off the node.
    "backups.view": _RUNNERS,
    "backups.run": _RUNNERS,
    "backups.download": _ADMIN,
}


def has_capability(user, capability: str) -> bool:
    if capability not in CAPABILITIES:
        raise KeyError(f"unknown capability {capability!r}")
    return bool(user.is_authenticated and user.is_active and user.role in CAPABILITIES[capability])


def capabilities_of(user) -> set[str]:
    return {name for name in CAPABILITIES if has_capability(user, name)}
