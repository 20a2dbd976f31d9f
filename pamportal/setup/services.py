"""First boot: the one-time setup token and the first administrator.

The token proves the operator is at the node's console. The database keeps only its
SHA-256; the plaintext sits in a 0600 file in the data dir so that ``manage.py
setup_token`` can print it again, and the file is removed once the token is used."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.services import audit_record
from pamportal.nodes.services import node_facts_collect
from pamportal.core import context

from .models import SetupToken
from .selectors import setup_is_complete, setup_token_rejections_from

TOKEN_FILE_NAME = "setup-token"
# Refused tokens from one address within the window before further tries are refused
# unseen. The token has 160 random bits, so this is about noise and audit, not odds.
MAX_REJECTIONS = 10
REJECTION_WINDOW = timedelta(minutes=15)
TARGET = "setup-token"


class SetupRefused(Exception):
    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.message = message
        self.reason = reason


def token_file() -> Path:
    return Path(settings.PAM_DATA_DIR) / TOKEN_FILE_NAME


def normalise_token(token: str) -> str:
    """Case, spaces and dashes do not matter when the operator types the token."""
    return re.sub(r"[^A-Z2-7]", "", (token or "").upper())


def token_hash(token: str) -> str:
    return hashlib.sha256(normalise_token(token).encode()).hexdigest()


def _new_token() -> str:
    raw = base64.b32encode(secrets.token_bytes(20)).decode()  # 32 characters, 160 bits
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def _write_token_file(token: str) -> None:
    path = token_file()
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (token + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _remove_token_file() -> None:
    try:
        token_file().unlink()
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime


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


def _refusal_message(reason: str) -> str:
    return _REFUSALS[reason].format(minutes=int(REJECTION_WINDOW.total_seconds() // 60))


def _token_problem(row: SetupToken | None) -> str:
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
        reason = _token_problem(row)
    if reason:
        audit_record(action=AuditAction.SETUP_TOKEN_REJECTED, target=TARGET, outcome=Outcome.DENIED, details={"reason": reason})
        return TokenCheck(ok=False, reason=reason, message=_refusal_message(reason))
    audit_record(action=AuditAction.SETUP_TOKEN_ACCEPTED, target=TARGET, details={"token_id": row.pk})
    return TokenCheck(ok=True, token_id=row.pk)


@dataclass(frozen=True)
class TotpCheck:
    ok: bool
    t: int = -1
    drift: int = 0
    message: str = ""


def setup_totp_key() -> str:
    """A new TOTP secret (hex, as TOTPDevice stores it), held in the wizard until the
    administrator is created."""
    return TOTPDevice._meta.get_field("key").default()


def setup_totp_device(*, username: str, key: str) -> TOTPDevice:
    """An unsaved device, for its ``config_url`` (the QR code) before the user exists."""
    return TOTPDevice(user=get_user_model()(username=username), key=key, name="authenticator")


@transaction.atomic
def setup_totp_check(*, username: str, key: str, code: str, after_t: int) -> TotpCheck:
    """Check a code against the secret shown in the wizard; a wrong one is audited."""
    device = setup_totp_device(username=username, key=key)
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time()
    code = (code or "").strip()
    if code.isdigit() and totp.verify(int(code), device.tolerance, after_t + 1):
        return TotpCheck(ok=True, t=totp.t(), drift=totp.drift)
    audit_record(
        action=AuditAction.SETUP_TOTP_REJECTED,
        target=f"user:{username}",
        outcome=Outcome.DENIED,
        details={"reason": "wrong or reused code" if code else "no code given"},
    )
    return TotpCheck(
        ok=False,
        message=(
            "That code does not match the secret shown. Check that your phone's clock is right "
            "and enter the current 6-digit code."
        ),
    )


def _audited_setup_refusals(service):
    atomic_service = transaction.atomic(service)

    def wrapper(**kwargs):
        try:
            return atomic_service(**kwargs)
        except SetupRefused as refused:
            audit_record(
                action=AuditAction.SETUP_TOKEN_REJECTED,
                target=TARGET,
                outcome=Outcome.DENIED,
                details={"reason": refused.reason, "stage": "create administrator"},
            )
            raise

    wrapper.__name__ = service.__name__
    wrapper.__doc__ = service.__doc__
    return wrapper


@_audited_setup_refusals
def setup_admin_create(*, token_id: int, username: str, password_hash: str, totp_key: str, totp_t: int, totp_drift: int):
    """Create the first administrator with a confirmed TOTP device and use up the token,
    all in one transaction. Returns (user, device)."""
    User = get_user_model()
    row = SetupToken.objects.select_for_update().filter(pk=token_id).first()
    if setup_is_complete():
        raise SetupRefused(_refusal_message("setup complete"), "setup complete")
    problem = _token_problem(row)
    if problem:
        raise SetupRefused(_refusal_message(problem), problem)
    if User.objects.filter(username__iexact=username).exists():
        raise SetupRefused(f"A user named “{username}” already exists; choose another name.", "username taken")
    user = User(username=username, role=Role.ADMINISTRATOR, is_active=True)
    user.password = password_hash
    user.save()
    device = TOTPDevice.objects.create(
        user=user, name="authenticator", key=totp_key, confirmed=True, last_t=totp_t, drift=totp_drift
    )
    row.used_at = timezone.now()
    row.save(update_fields=["used_at"])
    audit_record(
        action=AuditAction.SETUP_ADMIN_CREATED,
        target=f"user:{username}",
        details={"role": Role.ADMINISTRATOR.value, "totp": "confirmed", "token_id": row.pk},
    )
    transaction.on_commit(_remove_token_file)
    # The new administrator lands on a dashboard that already shows the node's facts.
    node_facts_collect(user=user)
    return user, device


def base32_secret(key: str) -> str:
    """The TOTP secret as authenticator apps take it, in groups of four."""
    secret = base64.b32encode(bytes.fromhex(key)).decode()
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
