"""Reading the licence: the current one, its history, and what it allows right now.

``licence_status`` verifies the stored file again rather than trusting the parsed
columns, so an edited database row cannot raise the node cap or extend the licence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from pamportal.crypto.licence import LicenceError, VerifiedLicence, format_when, verify_licence

from .models import Licence
from .services import allow_test_keys

# The licence warns this long before it expires.
EXPIRY_WARNING = timedelta(days=30)


@dataclass(frozen=True)
class LicenceStatus:
    ok: bool
    message: str
    days_left: int | None = None  # whole days, rounded up; None without a valid licence
    expiring_soon: bool = False
    max_nodes: int = 0  # 0: no node may be added
    features: tuple[str, ...] = field(default_factory=tuple)
    licence: Licence | None = None


def licence_current() -> Licence | None:
    return Licence.objects.select_related("installed_by").filter(replaced_at__isnull=True).first()


def licence_history() -> QuerySet[Licence]:
    """Every licence ever installed, newest first (the file bytes left out)."""
    return Licence.objects.select_related("installed_by").defer("raw")


def _days_left(remaining: timedelta) -> int:
    return max(0, math.ceil(remaining / timedelta(days=1)))


def licence_status(now: datetime | None = None) -> LicenceStatus:
    """Whether the node is licensed at ``now``, and for what. The preflight check
    ``licence.valid`` and the expiry banner read this."""
    now = now or timezone.now()
    licence = licence_current()
    if licence is None:
        return LicenceStatus(ok=False, message="No licence is installed. Upload the licence file from the vendor.")
    try:
        verified: VerifiedLicence = verify_licence(bytes(licence.raw), allow_test_keys=allow_test_keys())
        verified.check_validity(now)
    except LicenceError as error:
        return LicenceStatus(ok=False, message=error.message, licence=licence)
    remaining = verified.time_left(now)
    days_left = _days_left(remaining)
    expiring_soon = remaining <= EXPIRY_WARNING
    message = (
        f"Licensed to {verified.customer} ({verified.edition} edition) for up to {verified.max_nodes} "
        f"node{'s' if verified.max_nodes != 1 else ''}, until {format_when(verified.not_after)}."
    )
    if expiring_soon:
        message += f" The licence expires in {days_left} day{'s' if days_left != 1 else ''}."
    return LicenceStatus(
        ok=True,
        message=message,
        days_left=days_left,
        expiring_soon=expiring_soon,
        max_nodes=verified.max_nodes,
        features=verified.features,
        licence=licence,
    )
