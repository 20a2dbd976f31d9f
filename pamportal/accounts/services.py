"""Everything that changes an account: logging in and out, TOTP enrolment, password
changes and the administrators' user management. Each change writes its audit event
in the same transaction: no audit, no action."""

from __future__ import annotations

import math
import secrets
import string
from dataclasses import dataclass

from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.contrib import auth
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_login_failed
from django.contrib.sessions.models import Session
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from django_otp import login as otp_login
from django_otp.oath import TOTP, hotp

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.refusals import Refused, audited_refusals
from pamportal.audit.repeats import audit_refusal_repeated
from pamportal.audit.services import audit_record

from .models import TOTPDevice
from .roles import Role

User = get_user_model()

# Characters of a temporary password: no look-alikes (0/O, 1/l/I) for reading it out.
_TEMP_ALPHABET = "".join(c for c in string.ascii_letters + string.digits if c not in "0O1lI")


class AccountRefused(Refused):
    """An account change that policy refuses; the message is for the operator."""


def _target(user) -> str:
    return f"user:{user.get_username()}"


def _lock_user(user_id: int, action: AuditAction):
    try:
        return User.objects.select_for_update().get(pk=user_id)
    except (User.DoesNotExist, ValueError, TypeError):
        raise AccountRefused("There is no such user.", action=action, target=f"user#{user_id}", reason="no such user") from None


def _end_sessions(user) -> int:
    """Delete every live session of ``user``. Sessions are few on a console (they
    expire after the idle timeout), so scanning them is cheap and never misses one."""
    keys = [
        session.session_key
        for session in Session.objects.filter(expire_date__gt=timezone.now())
        if session.get_decoded().get(auth.SESSION_KEY) == str(user.pk)
    ]
    if keys:
        Session.objects.filter(session_key__in=keys).delete()
    return len(keys)


def temporary_password() -> str:
    return "-".join("".join(secrets.choice(_TEMP_ALPHABET) for _ in range(5)) for _ in range(4))


def lockout_minutes() -> int:
    cool_off = settings.AXES_COOLOFF_TIME
    return int(cool_off.total_seconds() // 60) if cool_off else 0


# --- TOTP codes: what a refused code tells the user ---------------------------------------
# django-otp holds a device off for 1, 2, 4 … seconds after each wrong code in a row
# (``verify_is_allowed``). Only from this many failures on is it "too many in a row";
# before that the user is only asked to wait the second or two left.
TOTP_TOO_MANY_IN_A_ROW = 3


def _totp_throttled(info: dict | None) -> tuple[str, str]:
    info = info or {}
    failures = int(info.get("failure_count") or 0)
    until = info.get("locked_until")
    seconds = max(1, math.ceil((until - timezone.now()).total_seconds())) if until else 1
    wait = f"{seconds} second{'s' if seconds != 1 else ''}"
    if failures >= TOTP_TOO_MANY_IN_A_ROW:
        return ("too many wrong codes in a row",
                f"Too many wrong codes in a row ({failures}). Wait {wait}, then enter the current code.")
    return ("too soon after a wrong code",
            f"The last code was not accepted; wait {wait}, then enter the current code.")


def totp_code_used(device: TOTPDevice, code: str) -> bool:
    """Whether ``code`` is one this device has already accepted: it matches a time step
    ``verify_token`` would look at, but not after the last step accepted (a replay)."""
    try:
        token = int(code)
        key = device.bin_key
    except Exception:  # not digits, or a secret that does not open: not "used"
        return False
    now_t = TOTP(key, device.step, device.t0, device.digits, device.drift).t()
    return any(
        hotp(key, t, digits=device.digits) == token
        for t in range(now_t - device.tolerance, min(now_t + device.tolerance, device.last_t) + 1)
    )


def totp_code_problem(device: TOTPDevice, code: str) -> tuple[str, str] | None:
    """Check ``code`` on ``device`` (a wrong one counts against its throttle): None when
    accepted, else (the audit reason, the message the user reads)."""
    allowed, info = device.verify_is_allowed()
    if not allowed:
        return _totp_throttled(info)
    code = (code or "").strip()
    if not code:
        return "no code given", "Enter the 6-digit code your authenticator app shows."
    if device.verify_token(code):
        return None
    if device.unusable_reason:
        return ("secret unreadable on this node",
                "Your authenticator's secret cannot be read on this node; ask an administrator to reset it.")
    if totp_code_used(device, code):
        return "code already used", "That code was already used; wait for the next code on your authenticator."
    return ("wrong TOTP code",
            "That 6-digit code does not match your authenticator. Check your phone's clock and enter the current code.")


# --- Logging in and out -----------------------------------------------------------------


@dataclass(frozen=True)
class LoginResult:
    user: object | None = None
    error: str = ""
    locked_out: bool = False


@transaction.atomic
def session_login(*, request: HttpRequest, username: str, password: str, code: str) -> LoginResult:
    """Password through axes (which counts failures and locks), then the TOTP code for
    users who have enrolled one. A wrong code counts as a failed login for axes."""
    response_context: dict = {}
    user = auth.authenticate(request, username=username, password=password, response_context=response_context)
    if response_context.get("error"):
        # Axes refused before the password was checked; its lockout signal records the
        # event and its middleware answers with the lockout page.
        return LoginResult(locked_out=True)
    if user is None:
        audit_record(
            action=AuditAction.LOGIN_FAILED,
            target=f"user:{username}"[:160],
            outcome=Outcome.DENIED,
            details={"reason": "wrong username or password"},
            actor_name=username[:150] or "anonymous",
        )
        return LoginResult(
            error="The username or password is not correct.",
            locked_out=bool(getattr(request, "axes_locked_out", False)),
        )

    device = TOTPDevice.objects.filter(user=user, confirmed=True).order_by("pk").first()
    if device is not None:
        allowed, info = device.verify_is_allowed()
        if not allowed:
            reason, error = _totp_throttled(info)
        elif not code:
            reason = "no code given"
            error = "Enter the 6-digit code from your authenticator app."
        elif not device.verify_token(code):
            # A secret that will not open on this node is logged with its cause by the
            # device; the user sees the usual message.
            reason = "secret unreadable on this node" if device.unusable_reason else "wrong or reused code"
            error = "The 6-digit code is not correct (or was already used). Check your phone's clock and enter the current code."
        else:
            reason = ""
        if reason:
            audit_record(
                action=AuditAction.TOTP_REJECTED,
                target=_target(user),
                outcome=Outcome.DENIED,
                details={"stage": "login", "reason": reason},
                actor_id=user.pk,
                actor_name=user.get_username(),
            )
            user_login_failed.send(sender=__name__, credentials={"username": username}, request=request)
            return LoginResult(error=error, locked_out=bool(getattr(request, "axes_locked_out", False)))

    session_start(request=request, user=user, device=device, via="login page")
    return LoginResult(user=user)


@transaction.atomic
def session_start(*, request: HttpRequest, user, device: TOTPDevice | None, via: str) -> None:
    """Log ``user`` in on a new session key, verified with ``device`` when given."""
    auth.login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    if device is not None:
        otp_login(request, device)
    audit_record(
        action=AuditAction.LOGIN_SUCCEEDED,
        target=_target(user),
        details={"second_factor": "totp" if device is not None else "none", "via": via},
        actor_id=user.pk,
        actor_name=user.get_username(),
    )


@transaction.atomic
def session_logout(*, request: HttpRequest) -> None:
    user = request.user
    if user.is_authenticated:
        audit_record(action=AuditAction.LOGOUT, target=_target(user))
    auth.logout(request)


def locked_out_record(*, username: str, ip_address: str) -> None:
    """Axes locked an account or address out (called from its signal, once per refused
    attempt). Anyone can repeat a refused attempt, so they are bounded per address:
    beyond the repeat limit of a window they are counted in one event."""

    audit_refusal_repeated(
        source=ip_address or "",
        kind=AuditAction.LOGIN_LOCKED_OUT.value,
        action=AuditAction.LOGIN_LOCKED_OUT,
        target=f"user:{username}"[:160] if username else f"ip:{ip_address}",
        outcome=Outcome.DENIED,
        details={"username": username or "", "ip_address": ip_address or "", "minutes": lockout_minutes()},
        actor_name=(username or "anonymous")[:150],
    )


# --- Own account ------------------------------------------------------------------------


@transaction.atomic
def totp_enrol_start(*, user) -> TOTPDevice:
    """The unconfirmed device being enrolled; the same one (and secret) until confirmed,
    so reloading the page does not invalidate a QR code already scanned."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-pk").first()
    if device is not None and not device.key_readable():
        device.delete()  # its QR code can never work again: start over with a new secret
        device = None
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)
    return device


@dataclass(frozen=True)
class EnrolResult:
    ok: bool
    error: str = ""


@transaction.atomic
def totp_enrol_confirm(*, request: HttpRequest, device: TOTPDevice, code: str) -> EnrolResult:
    user = request.user
    device = TOTPDevice.objects.select_for_update().get(pk=device.pk, user=user, confirmed=False)
    allowed, info = device.verify_is_allowed()
    if not allowed:
        reason, error = _totp_throttled(info)
    elif not code:
        reason, error = "no code given", "Enter the 6-digit code your authenticator app shows."
    elif not device.verify_token(code):
        reason = "wrong code"
        error = "That code does not match. Check that your phone's clock is right and enter the current 6-digit code."
    else:
        reason = error = ""
    if reason:
        audit_record(
            action=AuditAction.TOTP_REJECTED,
            target=_target(user),
            outcome=Outcome.DENIED,
            details={"stage": "enrolment", "reason": reason},
        )
        return EnrolResult(ok=False, error=error)
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    TOTPDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
    otp_login(request, device)
    audit_record(action=AuditAction.TOTP_ENROLLED, target=_target(user))
    return EnrolResult(ok=True)


@transaction.atomic
def password_change(*, user, new_password: str) -> None:
    """The caller has checked the old password and the password validators."""
    user = User.objects.select_for_update().get(pk=user.pk)
    user.set_password(new_password)
    user.must_change_password = False
    user.save(update_fields=["password", "must_change_password"])
    audit_record(action=AuditAction.PASSWORD_CHANGED, target=_target(user))


# --- User administration ----------------------------------------------------------------


@audited_refusals
def user_create(*, username: str, role: Role | str, password: str):
    """Create a user with an initial password, which they must change at first login."""
    role = Role(role)
    if User.objects.filter(username__iexact=username).exists():
        raise AccountRefused(
            f"A user named “{username}” already exists.",
            action=AuditAction.USER_CREATED,
            target=f"user:{username}",
            reason="username taken",
        )
    user = User.objects.create_user(username=username, password=password, role=role, must_change_password=True)
    audit_record(action=AuditAction.USER_CREATED, target=_target(user), details={"role": role.value})
    return user


def _refuse_if_last_administrator(user, action: AuditAction, verb: str) -> None:
    if user.role != Role.ADMINISTRATOR or not user.is_active:
        return
    others = User.objects.select_for_update().filter(role=Role.ADMINISTRATOR, is_active=True).exclude(pk=user.pk)
    if not others.exists():
        raise AccountRefused(
            f"{user.get_username()} is the only active administrator; {verb} them would leave nobody to manage the node.",
            action=action,
            target=_target(user),
            reason="last active administrator",
        )


def _refuse_self(user, actor, action: AuditAction, message: str) -> None:
    if actor is not None and actor.pk == user.pk:
        raise AccountRefused(message, action=action, target=_target(user), reason="own account")


def _refuse_if_already(user, action: AuditAction, *, active: bool) -> None:
    """Refuse a change that would leave the account as it is."""
    if user.is_active == active:
        state = "enabled" if active else "disabled"
        raise AccountRefused(
            f"{user.get_username()} is already {state}.", action=action, target=_target(user), reason=f"already {state}"
        )


@audited_refusals
def user_disable(*, actor, user_id: int):
    """Disable a user and end their sessions at once."""
    user = _lock_user(user_id, AuditAction.USER_DISABLED)
    _refuse_self(user, actor, AuditAction.USER_DISABLED, "You cannot disable your own account.")
    _refuse_if_last_administrator(user, AuditAction.USER_DISABLED, "disabling")
    _refuse_if_already(user, AuditAction.USER_DISABLED, active=False)
    user.is_active = False
    user.save(update_fields=["is_active"])
    ended = _end_sessions(user)
    audit_record(action=AuditAction.USER_DISABLED, target=_target(user), details={"sessions_ended": ended})
    return user


@audited_refusals
def user_enable(*, actor, user_id: int):
    user = _lock_user(user_id, AuditAction.USER_ENABLED)
    _refuse_if_already(user, AuditAction.USER_ENABLED, active=True)
    user.is_active = True
    user.save(update_fields=["is_active"])
    audit_record(action=AuditAction.USER_ENABLED, target=_target(user))
    return user


@audited_refusals
def user_reset(*, actor, user_id: int):
    """A new temporary password (returned once, never stored in clear), TOTP devices
    removed so the user enrols again, and their sessions ended."""
    user = _lock_user(user_id, AuditAction.USER_RESET)
    _refuse_self(
        user, actor, AuditAction.USER_RESET, "You cannot reset your own account; change your password instead."
    )
    password = temporary_password()
    user.set_password(password)
    user.must_change_password = True
    user.save(update_fields=["password", "must_change_password"])
    removed, _ = TOTPDevice.objects.filter(user=user).delete()
    ended = _end_sessions(user)
    audit_record(
        action=AuditAction.USER_RESET,
        target=_target(user),
        details={"totp_devices_removed": removed, "sessions_ended": ended},
    )
    return user, password


@audited_refusals
def user_unlock(*, actor, user_id: int):
    """Clear axes' failed attempts for this username, ending its lockout."""
    user = _lock_user(user_id, AuditAction.USER_UNLOCKED)
    cleared = AxesProxyHandler.reset_attempts(username=user.get_username())
    audit_record(action=AuditAction.USER_UNLOCKED, target=_target(user), details={"attempt_records_cleared": cleared})
    return user, cleared
