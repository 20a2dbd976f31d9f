"""The one-time setup token that proves the operator is at the node's console.

The database keeps only its SHA-256; the plaintext sits in a 0600 file in the data dir
so that ``manage.py setup_token`` can print it again, and the file is removed once the
token is used."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.refusals import Refused
from pamportal.audit.services import audit_record
from pamportal.core import context
from pamportal.core.files import write_private

from .models import SetupToken
from .selectors import (
    IssuedToken,
    normalise_token,
    setup_is_complete,
    setup_token_rejections_from,
    token_file,
    token_hash,
)

# Refused tokens from one address within the window before further tries are refused
# unseen. The token has 160 random bits, so this is about noise and audit, not odds.
MAX_REJECTIONS = 10
REJECTION_WINDOW = timedelta(minutes=15)
TARGET = "setup-token"


class SetupRefused(Refused):
    """The token (or setup as a whole) refuses this; recorded as a rejected token with
    the stage it was refused at, when the service records its refusals."""

    def __init__(self, message: str, reason: str, *, stage: str = ""):
        super().__init__(message, action=AuditAction.SETUP_TOKEN_REJECTED, target=TARGET, reason=reason,
                         details={"stage": stage} if stage else None)


def _new_token() -> str:
    raw = base64.b32encode(secrets.token_bytes(20)).decode()  # 32 characters, 160 bits
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def _write_token_file(token: str) -> None:
    write_private(token_file(), (token + "\n").encode())


def token_file_remove() -> None:
    try:
        token_file().unlink()
    except FileNotFoundError:
        pass


@transaction.atomic
def setup_token_issue() -> IssuedToken:
    """A new token; any earlier unused one is superseded."""
    if setup_is_complete():
        raise SetupRefused("Setup is already complete; no setup token is needed.", "setup complete")
    now = timezone.now()
    superseded = SetupToken.objects.filter(used_at__isnull=True, superseded_at__isnull=True).update(superseded_at=now)
    token = _new_token()
    expires_at = now + settings.PAM_SETUP_TOKEN_TTL
    SetupToken.objects.create(token_hash=token_hash(token), created_at=now, expires_at=expires_at)
    audit_record(
        action=AuditAction.SETUP_TOKEN_ISSUED,
        target=TARGET,
        details={"expires_at": expires_at.isoformat(), "superseded": superseded},
    )
    # Written last, so a failure here rolls the new token back; a file left behind by a
    # failed commit holds a token whose hash is not stored, which ``current`` ignores.
    _write_token_file(token)
    return IssuedToken(token=token, expires_at=expires_at)


@dataclass(frozen=True)
class TokenCheck:
    ok: bool
    token_id: int | None = None
    reason: str = ""
    message: str = ""


_REFUSALS = {
    "setup complete": "Setup is already complete: this node has an administrator. Log in instead.",
    "wrong": "That is not the setup token printed at the console. Check it and try again.",
    "replaced": (
        "That setup token has been replaced by a newer one. Use the token printed most recently at the "
        "console (`manage.py setup_token` prints it again)."
    ),
    "already used": "That setup token has already been used. Each token works once.",
    "expired": (
        "That setup token has expired; run `manage.py setup_token` at the node's console for a new one."
    ),
    "too many attempts": (
        "Too many wrong setup tokens from your address. Wait {minutes} minutes, then enter the token "
        "printed at the console."
    ),
}


def refusal_message(reason: str) -> str:
    return _REFUSALS[reason].format(minutes=int(REJECTION_WINDOW.total_seconds() // 60))


def token_problem(row: SetupToken | None) -> str:
    """Why this token row cannot be used ("" when it can)."""
    if row is None:
        return "wrong"
    if row.used_at is not None:
        return "already used"
    if row.superseded_at is not None:
        return "replaced"
    if row.expires_at <= timezone.now():
        return "expired"
    return ""


@transaction.atomic
def setup_token_check(*, token: str) -> TokenCheck:
    """Accept or refuse a token the operator typed; either way an audit event."""
    if setup_is_complete():
        reason = "setup complete"
        row = SetupToken.objects.filter(token_hash=token_hash(token)).first()
        if row is not None and row.used_at is not None:
            reason = "already used"
    elif setup_token_rejections_from(context.current().source_ip, REJECTION_WINDOW) >= MAX_REJECTIONS:
        reason = "too many attempts"
    else:
        row = SetupToken.objects.filter(token_hash=token_hash(token)).first() if normalise_token(token) else None
        reason = token_problem(row)
    if reason:
        audit_record(action=AuditAction.SETUP_TOKEN_REJECTED, target=TARGET, outcome=Outcome.DENIED, details={"reason": reason})
        return TokenCheck(ok=False, reason=reason, message=refusal_message(reason))
    audit_record(action=AuditAction.SETUP_TOKEN_ACCEPTED, target=TARGET, details={"token_id": row.pk})
    return TokenCheck(ok=True, token_id=row.pk)
