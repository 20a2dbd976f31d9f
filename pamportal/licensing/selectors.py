"""Reading the licence: the current one, its history, and what it allows right now.

``licence_status`` verifies the stored file again rather than trusting the parsed
columns, so an edited database row cannot raise the node cap or extend the licence.
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
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
    """The licence in force: ``Licence.objects.filter(replaced_at__isnull=True).first()``.

    Every page's licence banner reads it, so its SQL is built once per process (building
    it cost the ORM several times the read); the row itself is read on every call. No
    page shows the installing user's row (the licence keeps ``installed_by_name``), so
    it is not joined."""
    sql, params = _current_sql()
    return next(iter(Licence.objects.raw(sql, params)), None)


@functools.cache
def _current_sql() -> tuple[str, tuple]:
    return Licence.objects.filter(replaced_at__isnull=True)[:1].query.sql_with_params()


def licence_history() -> QuerySet[Licence]:
    """Every licence ever installed, newest first (the file bytes left out)."""
    return Licence.objects.defer("raw")


def _days_left(remaining: timedelta) -> int:
    return max(0, math.ceil(remaining / timedelta(days=1)))


# The last signature check, per process: (row id, SHA-256 of the file bytes, whether
# test keys were allowed) -> the verified payload or the refusal. The key is taken from
# the bytes just read, so a replaced licence or an edited row is verified afresh; only
# the Ed25519 check and the parsing are saved, never the row or the validity window.
_verified_cache: dict[tuple, VerifiedLicence | tuple[str, str, str]] = {}
_verified_lock = threading.Lock()


def _verify_cached(licence: Licence) -> VerifiedLicence:
    raw = bytes(licence.raw)
    test_keys = allow_test_keys()
    key = (licence.pk, hashlib.sha256(raw).digest(), test_keys)
    with _verified_lock:
        result = _verified_cache.get(key)
    if result is None:
        try:
            result = verify_licence(raw, allow_test_keys=test_keys)
        except LicenceError as error:
            result = (error.code, error.message, error.field)
        with _verified_lock:
            _verified_cache.clear()  # one licence is current at a time: keep only it
            _verified_cache[key] = result
    if isinstance(result, tuple):  # a refusal: raised afresh each time
        code, message, field_name = result
        raise LicenceError(code, message, field=field_name)
    return result


def licence_status(now: datetime | None = None) -> LicenceStatus:
    """Whether the node is licensed at ``now``, and for what. The preflight check
    ``licence.valid`` and the expiry banner read this."""
    now = now or timezone.now()
    licence = licence_current()
    if licence is None:
        return LicenceStatus(ok=False, message="No licence is installed. Upload the licence file from the vendor.")
    try:
        verified: VerifiedLicence = _verify_cached(licence)
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


def licence_status_for(request) -> LicenceStatus:
    """``licence_status`` once per request: the page and the banner of one request share
    it (kept on that request only, never across requests)."""
    status = getattr(request, "_pam_licence_status", None)
    if status is None:
        status = licence_status()
        request._pam_licence_status = status
    return status
