"""Installing a licence file. A refused file changes nothing but the audit trail."""

from __future__ import annotations

import hashlib
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.services import audit_record
from pamportal.crypto.licence import LicenceError, parse_licence, verify_licence

from .models import Licence


class LicenceRefused(Exception):
    """A licence file refused; ``code`` is stable, ``message`` is for the operator."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def allow_test_keys() -> bool:
    """The test vendor key is accepted only outside production settings."""
    return not settings.PRODUCTION


def licence_install(*, data: bytes, user=None, filename: str = "", now: datetime | None = None) -> Licence:
    """Verify ``data`` and make it the current licence, keeping the old one as history.

    A refusal raises ``LicenceRefused`` after recording one denied audit event in its
    own transaction, so the record of the attempt stays even though nothing else
    changes.
    """
    now = now or timezone.now()
    digest = hashlib.sha256(data).hexdigest()
    try:
        return _install(data=data, digest=digest, user=user, now=now, filename=filename)
    except LicenceError as error:
        refused = LicenceRefused(error.code, error.message)
    except LicenceRefused as error:
        refused = error
    with transaction.atomic():
        audit_record(
            action=AuditAction.LICENCE_REFUSED,
            target="licence",
            outcome=Outcome.DENIED,
            details={
                "code": refused.code,
                "reason": refused.message,
                "filename": filename[:200],
                "size": len(data),
                "sha256": digest,
            },
        )
    raise refused


def _canonical_of(licence: Licence) -> bytes | None:
    """The canonical payload of an installed licence (verified again from its file;
    it was accepted when installed, so the test key is no reason to refuse it here)."""
    try:
        return verify_licence(bytes(licence.raw), allow_test_keys=True).canonical()
    except LicenceError:
        return None


@transaction.atomic
def _install(*, data: bytes, digest: str, user, now: datetime, filename: str) -> Licence:
    verified = parse_licence(data, now=now, allow_test_keys=allow_test_keys())
    # Locks the current licence so that two installs at once replace it one after the
    # other, never both.
    current = list(Licence.objects.select_for_update().filter(replaced_at__isnull=True))
    # The same licence is the same verified payload, however its file is spelled.
    canonical = verified.canonical()
    if any(old.sha256 == digest or _canonical_of(old) == canonical for old in current):
        raise LicenceRefused("already_installed", "This licence file is already the installed licence.")
    replaced = [old.licence_id for old in current]
    Licence.objects.filter(pk__in=[old.pk for old in current]).update(replaced_at=now)
    licence = Licence.objects.create(
        licence_id=verified.licence_id,
        customer=verified.customer,
        edition=verified.edition,
        max_nodes=verified.max_nodes,
        features=list(verified.features),
        not_before=verified.not_before,
        not_after=verified.not_after,
        key_id=verified.key_id,
        raw=bytes(data),
        sha256=digest,
        installed_at=now,
        installed_by=user if user is not None and user.is_authenticated else None,
        installed_by_name=user.get_username() if user is not None and user.is_authenticated else "",
    )
    audit_record(
        action=AuditAction.LICENCE_INSTALLED,
        target=f"licence:{verified.licence_id}",
        details={
            "customer": verified.customer,
            "edition": verified.edition,
            "max_nodes": verified.max_nodes,
            "features": list(verified.features),
            "not_before": verified.not_before.isoformat(),
            "not_after": verified.not_after.isoformat(),
            "key_id": verified.key_id,
            "sha256": digest,
            "filename": filename[:200],
            "replaced": replaced,
        },
    )
    return licence
