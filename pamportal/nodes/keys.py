"""The node's Master Encryption Key through its life (generated, shown once,
downloaded once, confirmed by typing it back, or discarded before that; checked
later) and the certificates created with it at finalise, their private keys sealed
under it. The key file itself is ``keystore``'s; the database keeps a fingerprint."""

from __future__ import annotations

import hmac
import os
import re
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.services import audit_record
from pamportal.crypto import ca, mek
from pamportal.nodes.identity import node_filter, own_rows

from . import keystore
from .models import SEAL_PURPOSE, Certificate, CertificateKind, Node
from .progress import StepRefused, StepResult, node_locked, refuse_if_finalised, refuse_unless_due
from .selectors import node_current

# The names every node certificate carries besides the node's address.
LOCAL_NAMES = ("localhost", "127.0.0.1")


def mek_short(fingerprint: str) -> str:
    """The part of a fingerprint the audit trail shows."""
    return fingerprint[:16]


@sensitive_variables()
@transaction.atomic
def mek_generate(*, user) -> Node:
    """A new 256-bit MEK in the node's 0600 key file; the database keeps its fingerprint."""
    node = node_locked()
    refuse_if_finalised(node)
    refuse_unless_due(node, "mek")
    if node.mek_fingerprint:
        raise StepRefused("This node already has a Master Encryption Key; discard it first to generate a new one.")
    # A key file without a fingerprint: a join's (unsent, or ended), or one left by an
    # attempt that did not commit. Replaced below unless something still needs it.
    replacing = keystore.mek_exists()
    binding = mek_binding() if replacing else ""
    if binding:
        raise StepRefused(f"A key file exists and {binding}; it cannot be replaced.")
    key = mek.generate()
    node.mek_fingerprint = mek.fingerprint(key)
    node.mek_generated_at = timezone.now()
    node.mek_shown_at = node.mek_downloaded_at = node.mek_confirmed_at = None
    node.save()
    audit_record(
        action=AuditAction.MEK_GENERATED, target=f"node:{node.address}",
        details={"fingerprint": mek_short(node.mek_fingerprint), "bits": mek.MEK_BYTES * 8},
    )
    if replacing:
        details = mek_change_prepare(new_key=key, reason="a new key generated at the setup wizard's MEK step")
        if details:
            audit_record(action=AuditAction.MEK_DISCARDED, target=f"node:{node.address}", details=details)
    # Last: a failure writing the file rolls the row and its audit event back.
    mek_change_files(new_key=key)
    return node


def mek_of_node(node: Node) -> bytes:
    """The key in the file, refused unless it is the one this node recorded."""
    try:
        key = keystore.mek_load()
    except keystore.MekMissing:
        raise StepRefused("The key file is missing or damaged; discard this key and generate a new one.") from None
    if not hmac.compare_digest(mek.fingerprint(key), node.mek_fingerprint):
        raise StepRefused("The key file does not hold the key this node recorded; discard it and generate a new one.")
    return key


@sensitive_variables()
@transaction.atomic
def mek_reveal(*, user) -> str | None:
    """The MEK in groups, the first time only; None every time after (it is never
    displayed again)."""
    node = node_locked()
    if node.finalised_at is not None or not node.mek_fingerprint or node.mek_shown_at or node.mek_confirmed_at:
        return None
    if node.mek_generated_at is None:
        return None  # a key this node kept (a cluster's, after a wipe) was never its to show
    key = mek_of_node(node)
    node.mek_shown_at = timezone.now()
    node.save(update_fields=["mek_shown_at", "updated_at"])
    audit_record(action=AuditAction.MEK_SHOWN, target=f"node:{node.address}", details={"fingerprint": mek_short(node.mek_fingerprint)})
    return mek.encode(key)


@dataclass(frozen=True)
class MekDownload:
    ok: bool
    text: str = ""
    filename: str = ""
    message: str = ""


def mek_file_text(*, address: str, encoded: str, when: datetime) -> str:
    return (
        "pamportal Master Encryption Key\n"
        f"node: {address}\n"
        f"created: {when:%Y-%m-%d %H:%M:%S} UTC\n\n"
        f"{encoded}\n\n"
        "Keep this key offline and apart from the node's backups. A follower joining the\n"
        "cluster needs it, and nothing sealed with it can be read without it.\n"
    )


def _unconfirmed_key_refusal(node: Node, *, confirmed: str, missing: str) -> str:
    """Download and discard are for a key whose copy is not confirmed yet: the message
    ``confirmed`` once it is (or the node is finalised), ``missing`` without a key, else ""."""
    if node.finalised_at is not None or node.mek_confirmed_at is not None:
        return confirmed
    if not node.mek_fingerprint:
        return missing
    return ""


@sensitive_variables()
@transaction.atomic
def mek_download(*, user) -> MekDownload:
    """The key as a text file, once. A second download is refused (and audited)."""
    node = node_locked()
    refusal = _unconfirmed_key_refusal(
        node,
        confirmed="The Master Encryption Key can no longer be downloaded: your copy has been confirmed.",
        missing="There is no Master Encryption Key to download; generate one first.",
    )
    if not refusal and node.mek_generated_at is None:
        refusal = ("This node keeps the Master Encryption Key of the cluster it was removed from; it was not "
                   "generated here and is not offered for download. Type it from your copy, or discard it and "
                   "generate a new one.")
    if not refusal and node.mek_downloaded_at is not None:
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
    key = mek_of_node(node)
    now = timezone.now()
    node.mek_downloaded_at = now
    node.save(update_fields=["mek_downloaded_at", "updated_at"])
    audit_record(action=AuditAction.MEK_DOWNLOADED, target=f"node:{node.address}", details={"fingerprint": mek_short(node.mek_fingerprint)})
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
def mek_confirm(*, user, typed: str) -> StepResult:
    """The operator proves they have a copy by typing it back."""
    node = node_locked()
    refuse_if_finalised(node)
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
    audit_record(action=AuditAction.MEK_CONFIRMED, target=f"node:{node.address}", details={"fingerprint": mek_short(node.mek_fingerprint)})
    return StepResult(ok=True, message="Your copy of the Master Encryption Key is confirmed.")


@transaction.atomic
def mek_discard(*, user) -> StepResult:
    """Throw away a key whose copy is not confirmed yet (nothing is sealed with it)."""
    node = node_locked()
    refusal = _unconfirmed_key_refusal(
        node,
        confirmed="Your copy of the key is confirmed; the key can no longer be discarded.",
        missing="There is no key to discard.",
    )
    binding = "" if refusal else mek_binding()
    if binding:
        refusal = f"This key cannot be discarded: {binding}."
    if refusal:
        audit_record(action=AuditAction.MEK_DISCARDED, target=f"node:{node.address}", outcome=Outcome.DENIED, details={"reason": refusal})
        return StepResult(ok=False, message=refusal)
    old = node.mek_fingerprint
    node.mek_fingerprint = ""
    node.mek_generated_at = node.mek_shown_at = node.mek_downloaded_at = None
    node.save()
    # What was sealed under it (the audit signing key, after a wipe the replaced
    # certificates' keys) is moved off it or destroyed before the file goes.
    details = mek_change_prepare(new_key=None, reason="discarded at the setup wizard's MEK step")
    audit_record(action=AuditAction.MEK_DISCARDED, target=f"node:{node.address}",
                 details={**details, "fingerprint": mek_short(old)})
    mek_change_files(new_key=None)
    return StepResult(ok=True, message="The key was discarded. Generate a new one.")


@sensitive_variables()
@transaction.atomic
def mek_check(*, user, typed: str) -> StepResult:
    """Compare a typed MEK with this node's fingerprint; right or wrong, audited."""
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


# --- a key held only for now: replaced, or forgotten ------------------------------------
# Joins whose request reached the leader, or that made this node a member: the MEK is
# the cluster's and the leader holds a request proved with it.
BOUND_JOIN_STATES = ("requested", "joining", "joined")


def mek_binding() -> str:
    """Why the MEK in this node's key file must stay as it is ("" when the node holds it
    only for now: a join's key before its request is sent or after the join ended, the
    wizard's key before finalise, a cluster's key kept after a wipe)."""
    from pamportal.cluster.follower_models import FollowerJoin  # the cluster app builds on this one

    if Node.objects.filter(**node_filter(), finalised_at__isnull=False).exists():
        return "this node's setup is finalised with it"
    if Certificate.objects.filter(replaced_at__isnull=True).exists():
        return "this node's current certificates are sealed with it"
    if own_rows(FollowerJoin.objects, "own_address").filter(state__in=BOUND_JOIN_STATES).exists():
        return "a join request proved with it is with the leader"
    return ""


@sensitive_variables()
def mek_change_prepare(*, new_key: bytes | None, reason: str) -> dict:
    """Inside the caller's transaction, before ``mek_change_files``: move what is sealed
    under the MEK in the key file off it, so the file can be replaced by ``new_key`` or
    removed (``new_key`` None). The audit signing keys are re-sealed under the new key
    (without one the active key goes back to its file); the private keys of replaced
    certificates (evidence only) and the secrets of joins not with the leader are
    destroyed, such a join still open is ended; the node's own record of the key goes
    if it was this one. Refused (``StepRefused``) while the key is bound (see
    ``mek_binding``). Returns the details for the caller's audit event ({} without a
    key file)."""
    from pamportal.audit import signing
    from pamportal.cluster.follower_models import FollowerJoin, JoinState

    try:
        old_key = keystore.mek_load()
    except keystore.MekMissing:
        return {}
    binding = mek_binding()
    if binding:
        raise StepRefused(f"This node's Master Encryption Key cannot be replaced: {binding}.")
    old = mek.fingerprint(old_key)
    moved = signing.signing_keys_reseal(old_mek=old_key, new_mek=new_key)
    certificate_keys = Certificate.objects.filter(replaced_at__isnull=False).exclude(sealed_key="").update(sealed_key="")
    joins = own_rows(FollowerJoin.objects, "own_address").select_for_update().exclude(state__in=BOUND_JOIN_STATES)
    ended = 0
    for join in joins.filter(state__in=(JoinState.OPENED, JoinState.CHECKED)):
        join.state, join.failure_reason = JoinState.FAILED, f"Ended: this node's Master Encryption Key was {reason}."
        join.save(update_fields=["state", "failure_reason", "updated_at"])
        ended += 1
    join_secrets = joins.filter(~Q(sealed_join_token="") | ~Q(sealed_poll_secret="") | ~Q(sealed_node_key="")).update(
        sealed_join_token="", sealed_poll_secret="", sealed_node_key="")
    node = Node.objects.select_for_update().filter(**node_filter()).first()
    if node is not None and node.mek_fingerprint and hmac.compare_digest(node.mek_fingerprint, old):
        node.mek_fingerprint = ""
        node.mek_generated_at = node.mek_shown_at = node.mek_downloaded_at = node.mek_confirmed_at = None
        node.save()
    return {"fingerprint": mek_short(old), "reason": reason,
            "replaced_by": mek_short(mek.fingerprint(new_key)) if new_key is not None else "",
            "audit_keys": moved, "certificate_keys_destroyed": certificate_keys,
            "join_secrets_destroyed": join_secrets, "joins_ended": ended}


def mek_change_files(*, new_key: bytes | None) -> None:
    """Last in the caller's transaction (after ``mek_change_prepare``): put ``new_key``
    in the key file (none: no key file). The old file is moved aside first and put back
    if writing the new one fails; once the transaction commits it is overwritten and
    removed."""
    path = keystore.mek_path()
    try:
        old_key = path.read_bytes()
    except FileNotFoundError:
        if new_key is not None:
            keystore.mek_install(new_key)
        return
    if new_key is not None and hmac.compare_digest(old_key, new_key):
        return
    # Named after the key, so an aside left by a change that did not commit is never
    # overwritten by the next one.
    aside = path.with_name(f".{path.name}.{mek.fingerprint(old_key)[:16]}.old")
    os.replace(path, aside)
    try:
        if new_key is not None:
            keystore.mek_install(new_key)
    except BaseException:
        os.replace(aside, path)
        raise
    transaction.on_commit(lambda: _shred(aside))


def _shred(path) -> None:
    try:
        with open(path, "r+b") as handle:
            size = len(handle.read())
            handle.seek(0)
            handle.write(b"\0" * size)
            handle.flush()
            os.fsync(handle.fileno())
        path.unlink()
    except FileNotFoundError:
        pass


# --- certificates ----------------------------------------------------------------------
def _certificate_row(kind: CertificateKind, issued: ca.Issued, now: datetime) -> Certificate:
    info = ca.certificate_info(issued.cert_pem)
    return Certificate.objects.create(
        kind=kind, subject=info.subject, names=info.names, serial=f"{info.serial:x}", sha256=info.sha256,
        not_before=info.not_before, not_after=info.not_after, cert_pem=issued.cert_pem.decode(),
        sealed_key=keystore.seal(purpose=SEAL_PURPOSE[kind], data=issued.key_pem), created_at=now,
    )


@dataclass(frozen=True)
class NodeCertificates:
    """What finalise created: the CA and the node certificate, keys in the clear for
    the files the console serves (the rows hold them sealed)."""

    ca: ca.Issued
    node: ca.Issued


@sensitive_variables()
def certificates_create(*, node: Node, now: datetime) -> NodeCertificates:
    """Inside the caller's transaction: the cluster CA and this node's certificate, each
    a row (private key sealed with the MEK) with its audit event."""
    ca_issued = ca.create_ca(name=f"pamportal cluster CA {node.address}"[:64])
    ca_row = _certificate_row(CertificateKind.CLUSTER_CA, ca_issued, now)
    audit_record(
        action=AuditAction.CA_CREATED, target=f"certificate:{ca_row.sha256[:16]}",
        details={"subject": ca_row.subject, "not_after": ca_row.not_after.isoformat(), "sha256": ca_row.sha256},
    )
    names = [node.address, *LOCAL_NAMES]
    node_issued = ca.issue_node_certificate(ca_cert_pem=ca_issued.cert_pem, ca_key_pem=ca_issued.key_pem, names=names)
    node_row = _certificate_row(CertificateKind.NODE_TLS, node_issued, now)
    audit_record(
        action=AuditAction.NODE_CERTIFICATE_ISSUED, target=f"certificate:{node_row.sha256[:16]}",
        details={"subject": node_row.subject, "names": node_row.names, "not_after": node_row.not_after.isoformat(),
                 "sha256": node_row.sha256, "issuer": ca_row.subject},
    )
    return NodeCertificates(ca=ca_issued, node=node_issued)


def certificates_install(*, ca_cert_pem: bytes, cert_pem: bytes, sealed_key: str, now: datetime) -> None:
    """Inside the caller's transaction: make these the current cluster CA and node
    certificate (a follower's, signed by the leader; its key already sealed), keeping
    the ones they replace as history. Safe to run again with the same certificates."""
    for kind, pem, sealed in ((CertificateKind.CLUSTER_CA, ca_cert_pem, ""), (CertificateKind.NODE_TLS, cert_pem, sealed_key)):
        info = ca.certificate_info(pem)
        Certificate.objects.filter(kind=kind, replaced_at__isnull=True).exclude(cert_pem=pem.decode()).update(
            replaced_at=now)
        Certificate.objects.get_or_create(
            kind=kind, replaced_at=None, cert_pem=pem.decode(),
            defaults=dict(subject=info.subject, names=info.names, serial=f"{info.serial:x}", sha256=info.sha256,
                          not_before=info.not_before, not_after=info.not_after, sealed_key=sealed, created_at=now),
        )
