"""The first administrator: the TOTP secret shown in the wizard, the code that proves
the operator's phone has it, and the account created with both, using up the token."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django_otp.oath import TOTP

from pamportal.accounts.models import TOTPDevice, default_key
from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.refusals import audited_refusals
from pamportal.audit.services import audit_record
from pamportal.nodes.services import node_facts_collect

from .models import SetupToken
from .selectors import setup_is_complete
from .token import SetupRefused, refusal_message, token_file_remove, token_problem

ADMIN_STAGE = "create administrator"


@dataclass(frozen=True)
class TotpCheck:
    ok: bool
    t: int = -1
    drift: int = 0
    message: str = ""


def setup_totp_key() -> str:
    """A new TOTP secret (hex, as TOTPDevice stores it), held in the wizard until the
    administrator is created."""
    return default_key()


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


@audited_refusals
def setup_admin_create(*, token_id: int, username: str, password_hash: str, totp_key: str, totp_t: int, totp_drift: int):
    """Create the first administrator with a confirmed TOTP device and use up the token,
    all in one transaction. Returns (user, device)."""
    User = get_user_model()
    row = SetupToken.objects.select_for_update().filter(pk=token_id).first()
    if setup_is_complete():
        raise SetupRefused(refusal_message("setup complete"), "setup complete", stage=ADMIN_STAGE)
    problem = token_problem(row)
    if problem:
        raise SetupRefused(refusal_message(problem), problem, stage=ADMIN_STAGE)
    if User.objects.filter(username__iexact=username).exists():
        raise SetupRefused(f"A user named “{username}” already exists; choose another name.", "username taken",
                           stage=ADMIN_STAGE)
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
    transaction.on_commit(token_file_remove)
    # The new administrator lands on a dashboard that already shows the node's facts.
    node_facts_collect(user=user)
    return user, device


def base32_secret(key: str) -> str:
    """The TOTP secret as authenticator apps take it, in groups of four."""
    secret = base64.b32encode(bytes.fromhex(key)).decode()
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
