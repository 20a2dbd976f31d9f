"""First boot: the one-time setup token and the first administrator.

The token proves the operator is at the node's console. The database keeps only its
SHA-256; the plaintext sits in a 0600 file in the data dir so that ``manage.py
setup_token`` can print it again, and the file is removed once the token is used."""

from __future__ import annotations

import base64
import hashlib
import hmac
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
from django.views.decorators.debug import sensitive_variables
from django_otp.oath import TOTP

from pamportal.accounts.models import TOTPDevice, default_key
from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.services import audit_record
from pamportal.cluster import local_member
from pamportal.core import context
from pamportal.crypto import mek
from pamportal.nodes.services import node_facts_collect

from . import partners
from .models import SetupToken
from .selectors import NODE_STEPS, node_setup_due, setup_is_complete, setup_token_rejections_from

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


# --- after the administrator: node, preflight, licence, MEK, finalise -------------------
# Each service locks this node's row, checks the step is due, changes it and writes its
# audit event in the same transaction. Refusals the operator should see come back as
# ``StepRefused`` with the message to show.

class StepRefused(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class StepResult:
    ok: bool
    message: str = ""


def _node_locked():
    from pamportal.nodes.models import Node

    Node.objects.get_or_create(pk=Node.SINGLETON_PK)
    return Node.objects.select_for_update().get(pk=Node.SINGLETON_PK)


def _not_finalised(node) -> None:
    if node.finalised_at is not None:
        raise StepRefused("Setup of this node is already finalised.")


def _due_at_least(node, step: str) -> None:
    """Refuse a step whose earlier steps are not done."""
    due = node_setup_due(node)
    if due is None:
        raise StepRefused("Setup of this node is already finalised.")
    if NODE_STEPS.index(due) < NODE_STEPS.index(step):
        titles = {"node": "the node address", "preflight": "preflight", "licence": "the licence", "mek": "the Master Encryption Key"}
        raise StepRefused(f"Finish {titles[due]} first.")


@transaction.atomic
def setup_node_set(*, user, address: str, ntp_servers: list[str]):
    """Set the node address and NTP servers. A change voids an earlier preflight run."""
    node = _node_locked()
    _not_finalised(node)
    changed = node.address != address or list(node.ntp_servers or []) != list(ntp_servers)
    node.address, node.ntp_servers = address, list(ntp_servers)
    if changed:
        node.preflight_run_id = None
        node.preflight_passed_at = None
    node.save()
    audit_record(
        action=AuditAction.SETUP_NODE_SET,
        target=f"node:{address}",
        details={"address": address, "ntp_servers": list(ntp_servers), "changed": changed},
    )
    return node


@transaction.atomic
def setup_preflight_start(*, user):
    """Start a preflight run with this node's address and NTP servers."""
    node = _node_locked()
    _not_finalised(node)
    _due_at_least(node, "preflight")
    run = partners.preflight_run_start(user=user, address=node.address, ntp_servers=node.ntp_servers)
    node.preflight_run_id = run.pk
    node.preflight_passed_at = None
    node.save(update_fields=["preflight_run_id", "preflight_passed_at", "updated_at"])
    return run


@transaction.atomic
def setup_preflight_pass(*, user):
    """Go on from preflight: the wizard's run has ended with nothing blocking (no error,
    every warning accepted)."""
    node = _node_locked()
    _not_finalised(node)
    _due_at_least(node, "preflight")
    run = partners.preflight_run(node.preflight_run_id)
    if run is None:
        raise StepRefused("Run preflight first.")
    if not partners.preflight_finished(run):
        raise StepRefused("Preflight is still running; wait for every check to finish.")
    blocking = partners.preflight_blocking(run)
    if blocking:
        raise StepRefused(
            f"Preflight found {len(blocking)} problem(s) that block setup: fix each error and run preflight again, "
            "or accept each warning with a reason on the preflight page."
        )
    node.preflight_passed_at = timezone.now()
    node.save(update_fields=["preflight_passed_at", "updated_at"])
    audit_record(action=AuditAction.SETUP_PREFLIGHT_PASSED, target=f"node:{node.address}", details={"preflight_run": run.pk})
    return node


@transaction.atomic
def setup_licence_done(*, user):
    """Go on from the licence step: a valid licence is installed."""
    node = _node_locked()
    _not_finalised(node)
    _due_at_least(node, "licence")
    status = partners.licence_status()
    if not status.ok:
        raise StepRefused(status.message)
    licence = status.licence
    node.licence_done_at = timezone.now()
    node.save(update_fields=["licence_done_at", "updated_at"])
    audit_record(
        action=AuditAction.SETUP_LICENCE_DONE,
        target=f"node:{node.address}",
        details={"licence": licence.licence_id, "customer": licence.customer, "edition": licence.edition},
    )
    return node


def _mek_short(fingerprint: str) -> str:
    return fingerprint[:16]


@sensitive_variables()
@transaction.atomic
def setup_mek_generate(*, user):
    """A new 256-bit MEK in the node's 0600 key file; the database keeps its fingerprint."""
    from pamportal.nodes import keystore
    from pamportal.nodes.models import Certificate

    node = _node_locked()
    _not_finalised(node)
    _due_at_least(node, "mek")
    if node.mek_fingerprint:
        raise StepRefused("This node already has a Master Encryption Key; discard it first to generate a new one.")
    if keystore.mek_exists():
        # Left by an attempt whose transaction did not commit (or a discard whose
        # removal did not run): nothing can have been sealed with it.
        if Certificate.objects.exists():
            raise StepRefused("A key file exists and secrets are sealed with it; it cannot be replaced.")
        keystore.mek_remove()
    key = mek.generate()
    node.mek_fingerprint = mek.fingerprint(key)
    node.mek_generated_at = timezone.now()
    node.mek_shown_at = node.mek_downloaded_at = node.mek_confirmed_at = None
    node.save()
    audit_record(
        action=AuditAction.MEK_GENERATED, target=f"node:{node.address}",
        details={"fingerprint": _mek_short(node.mek_fingerprint), "bits": mek.MEK_BYTES * 8},
    )
    # Last: a failure writing the file rolls the row and its audit event back.
    keystore.mek_install(key)
    return node


def _mek_of_node(node) -> bytes:
    from pamportal.nodes import keystore

    try:
        key = keystore.mek_load()
    except keystore.MekMissing:
        raise StepRefused("The key file is missing or damaged; discard this key and generate a new one.") from None
    if not hmac.compare_digest(mek.fingerprint(key), node.mek_fingerprint):
        raise StepRefused("The key file does not hold the key this node recorded; discard it and generate a new one.")
    return key


@sensitive_variables()
@transaction.atomic
def setup_mek_reveal(*, user) -> str | None:
    """The MEK in groups, the first time only; None every time after (it is never
    displayed again)."""
    node = _node_locked()
    if node.finalised_at is not None or not node.mek_fingerprint or node.mek_shown_at or node.mek_confirmed_at:
        return None
    key = _mek_of_node(node)
    node.mek_shown_at = timezone.now()
    node.save(update_fields=["mek_shown_at", "updated_at"])
    audit_record(action=AuditAction.MEK_SHOWN, target=f"node:{node.address}", details={"fingerprint": _mek_short(node.mek_fingerprint)})
    return mek.encode(key)


@dataclass(frozen=True)
class MekDownload:
    ok: bool
    text: str = ""
    filename: str = ""
    message: str = ""


def mek_file_text(*, address: str, encoded: str, when) -> str:
    return (
        "pamportal Master Encryption Key\n"
        f"node: {address}\n"
        f"created: {when:%Y-%m-%d %H:%M:%S} UTC\n\n"
        f"{encoded}\n\n"
        "Keep this key offline and apart from the node's backups. A follower joining the\n"
        "cluster needs it, and nothing sealed with it can be read without it.\n"
    )


@sensitive_variables()
@transaction.atomic
def setup_mek_download(*, user) -> MekDownload:
    """The key as a text file, once. A second download is refused (and audited)."""
    node = _node_locked()
    refusal = ""
    if node.finalised_at is not None or node.mek_confirmed_at is not None:
        refusal = "The Master Encryption Key can no longer be downloaded: your copy has been confirmed."
    elif not node.mek_fingerprint:
        refusal = "There is no Master Encryption Key to download; generate one first."
    elif node.mek_downloaded_at is not None:
        refusal = (
            f"The Master Encryption Key was already downloaded at {node.mek_downloaded_at:%Y-%m-%d %H:%M:%S} UTC; "
            "it can be downloaded only once. Use that file, or discard this key and generate a new one."
        )
    if refusal:
        audit_record(
            action=AuditAction.MEK_DOWNLOAD_REFUSED, target=f"node:{node.address}", outcome=Outcome.DENIED,
            details={"reason": refusal.split(":")[0][:120]},
        )
        return MekDownload(ok=False, message=refusal)
    key = _mek_of_node(node)
    now = timezone.now()
    node.mek_downloaded_at = now
    node.save(update_fields=["mek_downloaded_at", "updated_at"])
    audit_record(action=AuditAction.MEK_DOWNLOADED, target=f"node:{node.address}", details={"fingerprint": _mek_short(node.mek_fingerprint)})
    encoded = mek.encode(key)
    safe_address = re.sub(r"[^a-zA-Z0-9.-]", "_", node.address)
    return MekDownload(
        ok=True, text=mek_file_text(address=node.address, encoded=encoded, when=node.mek_generated_at or now),
        filename=f"pamportal-mek-{safe_address}.txt",
    )


def _typed_problem(typed: str, fingerprint: str) -> tuple[str, str]:
    """(reason for the audit, message for the operator); ("", "") when it is the key."""
    try:
        key = mek.decode(typed)
    except mek.MekFormatError as error:
        reason = "checksum" if "checksum" in str(error) else "format"
        return reason, str(error)
    if not fingerprint or not hmac.compare_digest(mek.fingerprint(key), fingerprint):
        return "different key", (
            "That is a well-formed Master Encryption Key, but not this node's key. Check that you typed it from "
            "the copy of this node's key."
        )
    return "", ""


@sensitive_variables()
@transaction.atomic
def setup_mek_confirm(*, user, typed: str) -> StepResult:
    """The operator proves they have a copy by typing it back."""
    node = _node_locked()
    _not_finalised(node)
    if not node.mek_fingerprint:
        raise StepRefused("Generate the Master Encryption Key first.")
    if node.mek_confirmed_at is not None:
        return StepResult(ok=True, message="Your copy of the Master Encryption Key is already confirmed.")
    reason, message = _typed_problem(typed, node.mek_fingerprint)
    if reason:
        audit_record(
            action=AuditAction.MEK_CONFIRM_FAILED, target=f"node:{node.address}", outcome=Outcome.FAILED,
            details={"reason": reason},
        )
        return StepResult(ok=False, message=message)
    node.mek_confirmed_at = timezone.now()
    node.save(update_fields=["mek_confirmed_at", "updated_at"])
    audit_record(action=AuditAction.MEK_CONFIRMED, target=f"node:{node.address}", details={"fingerprint": _mek_short(node.mek_fingerprint)})
    return StepResult(ok=True, message="Your copy of the Master Encryption Key is confirmed.")


@transaction.atomic
def setup_mek_discard(*, user) -> StepResult:
    """Throw away a key whose copy is not confirmed yet (nothing is sealed with it)."""
    from pamportal.nodes import keystore
    from pamportal.nodes.models import Certificate

    node = _node_locked()
    refusal = ""
    if node.finalised_at is not None or node.mek_confirmed_at is not None:
        refusal = "Your copy of the key is confirmed; the key can no longer be discarded."
    elif not node.mek_fingerprint:
        refusal = "There is no key to discard."
    elif Certificate.objects.exists():
        refusal = "Secrets are sealed with this key; it cannot be discarded."
    if refusal:
        audit_record(action=AuditAction.MEK_DISCARDED, target=f"node:{node.address}", outcome=Outcome.DENIED, details={"reason": refusal})
        return StepResult(ok=False, message=refusal)
    old = node.mek_fingerprint
    node.mek_fingerprint = ""
    node.mek_generated_at = node.mek_shown_at = node.mek_downloaded_at = None
    node.save()
    audit_record(action=AuditAction.MEK_DISCARDED, target=f"node:{node.address}", details={"fingerprint": _mek_short(old)})
    # After commit: should the removal not happen, the next "generate" removes the
    # orphaned file, which has no fingerprint and seals nothing.
    transaction.on_commit(keystore.mek_remove)
    return StepResult(ok=True, message="The key was discarded. Generate a new one.")


@sensitive_variables()
@transaction.atomic
def mek_check(*, user, typed: str) -> StepResult:
    """Compare a typed MEK with this node's fingerprint; right or wrong, audited."""
    from pamportal.nodes.selectors import node_current

    node = node_current()
    if not node.mek_fingerprint or node.mek_confirmed_at is None:
        audit_record(action=AuditAction.MEK_CHECKED, target=f"node:{node.address}", outcome=Outcome.FAILED,
                     details={"match": False, "reason": "no key yet"})
        return StepResult(ok=False, message="This node has no confirmed Master Encryption Key yet (setup is not finished).")
    reason, message = _typed_problem(typed, node.mek_fingerprint)
    audit_record(
        action=AuditAction.MEK_CHECKED, target=f"node:{node.address}",
        outcome=Outcome.FAILED if reason else Outcome.SUCCEEDED,
        details={"match": not reason, **({"reason": reason} if reason else {})},
    )
    if reason:
        return StepResult(ok=False, message=message)
    return StepResult(ok=True, message="That is this node's Master Encryption Key.")


def _certificate_row(kind, issued, purpose: str, now):
    from pamportal.crypto import ca
    from pamportal.nodes import keystore
    from pamportal.nodes.models import Certificate

    info = ca.certificate_info(issued.cert_pem)
    return Certificate.objects.create(
        kind=kind, subject=info.subject, names=info.names, serial=f"{info.serial:x}", sha256=info.sha256,
        not_before=info.not_before, not_after=info.not_after, cert_pem=issued.cert_pem.decode(),
        sealed_key=keystore.seal(purpose=purpose, data=issued.key_pem), created_at=now,
    )


LOCAL_NAMES = ("localhost", "127.0.0.1")


@sensitive_variables()
@transaction.atomic
def setup_finalise(*, user):
    """Create the cluster CA and this node's certificate (private keys stored only
    sealed with the MEK), write the certificate files the console serves, and mark the
    node a finalised standalone server: one transaction with its audit events."""
    from pamportal.crypto import ca
    from pamportal.nodes import services as node_services
    from pamportal.nodes.models import SEAL_PURPOSE, CertificateKind, NodeRole

    node = _node_locked()
    _not_finalised(node)
    _due_at_least(node, "finalise")
    status = partners.licence_status()
    if not status.ok:
        raise StepRefused(f"{status.message} Go back to the licence step.")
    _mek_of_node(node)
    now = timezone.now()
    ca_issued = ca.create_ca(name=f"pamportal cluster CA {node.address}"[:64])
    ca_row = _certificate_row(CertificateKind.CLUSTER_CA, ca_issued, SEAL_PURPOSE[CertificateKind.CLUSTER_CA], now)
    audit_record(
        action=AuditAction.CA_CREATED, target=f"certificate:{ca_row.sha256[:16]}",
        details={"subject": ca_row.subject, "not_after": ca_row.not_after.isoformat(), "sha256": ca_row.sha256},
    )
    names = [node.address, *LOCAL_NAMES]
    node_issued = ca.issue_node_certificate(ca_cert_pem=ca_issued.cert_pem, ca_key_pem=ca_issued.key_pem, names=names)
    node_row = _certificate_row(CertificateKind.NODE_TLS, node_issued, SEAL_PURPOSE[CertificateKind.NODE_TLS], now)
    audit_record(
        action=AuditAction.NODE_CERTIFICATE_ISSUED, target=f"certificate:{node_row.sha256[:16]}",
        details={"subject": node_row.subject, "names": node_row.names, "not_after": node_row.not_after.isoformat(),
                 "sha256": node_row.sha256, "issuer": ca_row.subject},
    )
    node.role = NodeRole.STANDALONE
    node.finalised_at = now
    node.finalised_by = user.get_username() if user is not None else ""
    node.save()
    audit_record(
        action=AuditAction.SETUP_FINALISED, target=f"node:{node.address}",
        details={"role": node.role, "address": node.address, "ntp_servers": node.ntp_servers,
                 "mek": _mek_short(node.mek_fingerprint)},
    )
    # Last: a failure writing the files rolls all of the above back.
    node_services.node_tls_files_write(
        cert_pem=node_issued.cert_pem, key_pem=node_issued.key_pem, ca_cert_pem=ca_issued.cert_pem
    )
    # The standalone node runs a one-member etcd (``serve`` starts it from this file),
    # ready to lead a cluster. Without the etcd binary preflight has said how to fix it.
    if local_member.etcd_available():
        address = node.address
        transaction.on_commit(lambda: local_member.local_member_configure(address=address))
    return node
