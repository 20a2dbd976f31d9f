"""The cluster joining bundle: what a leader hands an operator for one follower, parsed
strictly (no Django here).

A joining bundle file is UTF-8 JSON, exactly::

    {"format": "pamportal-joining-bundle", "version": 1,
     "header": {"cluster_id": "...", "bundle_id": "...",
                "created": "2026-01-31T10:00:00Z", "expires": "2026-02-01T10:00:00Z",
                "kdf": {"name": "HKDF-SHA256", "salt": "<base64url, 16-32 bytes>"},
                "mek_check": "<base64url, 32 bytes>"},
     "nonce": "<base64url, 12 bytes>",
     "ciphertext": "<base64url, AES-256-GCM ciphertext and 16-byte tag>"}

The body is AES-256-GCM under ``HKDF-SHA256(MEK, salt, info=BODY_KEY_INFO)``, with the
canonical JSON of ``{"format", "version", "header"}`` as associated data: changing any
header field (bundle id, expiry, cluster id, salt ...) or the format version breaks
the tag. The plaintext is the canonical JSON of exactly ``BODY_FIELDS``: the leader's
address and ports, the cluster CA certificate (the follower pins it), the single-use
join token (the leader keeps only ``token_hash``), the follower address the bundle is
bound to, and the leader's version.

GCM alone cannot tell a wrong key from a changed file. ``mek_check`` can: it is an
HMAC with a key derived from the MEK (purpose ``bundle-mek-check``) over a constant,
so a node recomputes it from the typed MEK. If it differs, the MEK is wrong ("wrong
MEK"); if it matches and the tag still fails, the file was changed ("tampered"). It is
computed over a constant rather than over a header field so that an edited salt or
bundle id reads as tampering, not as a wrong key. It only chooses the message: nothing
is trusted until the GCM tag verifies.

Everything is checked in an order that never trusts what is not yet verified: size,
encoding, JSON shape (bounded depth, no duplicate keys), format and version, the exact
fields and their types, the MEK, the tag, and only then the body's fields, the
validity window and the address. Each refusal is a ``BundleError`` with a stable
``code`` and an operator-facing message.

The module also holds the two other pieces of the join handshake that depend only on
the MEK: ``join_proof`` (the follower proves it holds the MEK with a MAC over its
canonical request) and ``token_hash`` (what the leader stores instead of the token).
"""


from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pamportal.core.addresses import address_normalize as normalize_address
from pamportal.core.addresses import address_problem  # noqa: F401 - the one node-address rule, for callers
from pamportal.crypto import mek as mek_module
from pamportal.crypto import strictjson
from pamportal.crypto.bundle_fields import (  # noqa: F401 - the format's names, re-exported
    BODY_FIELDS,
    BODY_KEY_INFO,
    CLOCK_SKEW,
    DEFAULT_PORTS,
    FORMAT,
    HEADER_FIELDS,
    JOIN_PROOF_PURPOSE,
    KDF_FIELDS,
    KDF_NAME,
    MAX_BYTES,
    MAX_CA_PEM,
    MAX_DEPTH,
    MEK_CHECK_BYTES,
    MEK_CHECK_INPUT,
    MEK_CHECK_PURPOSE,
    NONCE_BYTES,
    PORT_FIELDS,
    SALT_DEFAULT,
    SALT_MAX,
    SALT_MIN,
    TAG_BYTES,
    TIME_FORMAT,
    TOKEN_BYTES,
    TOP_FIELDS,
    VERSION,
    BundleError,
    LeaderPorts,
    _b64url,
    _bad,
    _exact_fields,
    _parse_body,
    _parse_header,
    format_time,
    format_when,
)
from pamportal.crypto.licence import FORMAT as LICENCE_FORMAT
from pamportal.crypto.licence import b64url_encode
from pamportal.crypto.secrets import secret_digest


@dataclass(frozen=True)
class OpenedBundle:
    """A bundle whose tag verified with the MEK, with every field checked."""

    # header (authenticated)
    cluster_id: str
    bundle_id: str
    created: datetime
    expires: datetime
    # body (encrypted and authenticated)
    leader_address: str
    leader_ports: LeaderPorts
    ca_cert_pem: str
    ca_sha256: str  # SHA-256 of the CA certificate's DER, hex: what the follower pins
    join_token: str
    follower_address: str
    leader_version: str

    def __repr__(self) -> str:  # never print the join token
        return (
            f"OpenedBundle(cluster_id={self.cluster_id!r}, bundle_id={self.bundle_id!r}, "
            f"follower_address={self.follower_address!r}, leader_address={self.leader_address!r}, "
            f"expires={format_time(self.expires)})"
        )


# --- Small helpers ------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """The one byte encoding of a JSON value that both ends compute: sorted keys, no
    spaces, ASCII only. Used for the AAD, the body and join requests."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def new_join_token() -> str:
    """A fresh single-use join token: 32 random bytes, base64url."""
    return b64url_encode(os.urandom(TOKEN_BYTES))


def token_hash(token: str) -> str:
    """What the leader stores instead of a join token: SHA-256, hex."""
    return secret_digest(token)


def _check_mek(mek: bytes) -> bytes:
    if not isinstance(mek, (bytes, bytearray)) or len(mek) != mek_module.MEK_BYTES:
        raise ValueError("a MEK is 32 bytes")
    return bytes(mek)


def _body_key(mek: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=BODY_KEY_INFO).derive(mek)


def _mek_check(mek: bytes) -> bytes:
    return hmac.new(mek_module.derive(mek, MEK_CHECK_PURPOSE), MEK_CHECK_INPUT, hashlib.sha256).digest()


def _aad(format_: Any, version: Any, header: Any) -> bytes:
    return canonical_json({"format": format_, "version": version, "header": header})


# --- Strict JSON ---------------------------------------------------------------------------


_JSON_MESSAGES = {
    strictjson.BOM: "The file starts with a byte-order mark; a joining bundle is plain UTF-8 JSON without one. "
                    "Upload the file exactly as the leader produced it.",
    strictjson.NOT_UTF8: "The file is not UTF-8 text; a joining bundle is a UTF-8 JSON document.",
    strictjson.TOO_DEEP: f"The file nests JSON more than {MAX_DEPTH} levels deep; a joining bundle nests at most 3.",
    strictjson.DUPLICATE_KEY: 'The file names the field "{key}" more than once.',
    strictjson.LONE_SURROGATE: "The file holds text that is not valid Unicode in {where}: a \\uD800-\\uDFFF escape "
                               "without its pair (a lone surrogate). A joining bundle never does.",
    strictjson.NUL_CHARACTER: "The file holds a NUL character (\\u0000) in {where}. A joining bundle never does.",
    strictjson.NUMBER_TOO_LARGE: "The file holds a number far larger than any in a joining bundle ({detail}).",
    strictjson.NOT_JSON: "The file is not valid JSON{at}.",
}
# The decrypted body: what is refused for its own reason; anything else is "bad_body".
_BODY_MESSAGES = {
    strictjson.TOO_DEEP: f"The bundle's contents nest JSON more than {MAX_DEPTH} levels deep; "
                         "a joining bundle nests at most 3.",
    strictjson.LONE_SURROGATE: _JSON_MESSAGES[strictjson.LONE_SURROGATE],
    strictjson.NUL_CHARACTER: _JSON_MESSAGES[strictjson.NUL_CHARACTER],
    strictjson.NUMBER_TOO_LARGE: "The bundle's contents hold a number far larger than any in a joining bundle ({detail}).",
}


def _load_json(data: bytes) -> Any:
    """Strict UTF-8 JSON (``strictjson.load``), each refusal with the bundle's message."""
    try:
        return strictjson.load(data, max_depth=MAX_DEPTH)
    except strictjson.Refused as refused:
        message = _JSON_MESSAGES[refused.code].format(**refused.fields())
        raise BundleError(refused.code, message, refused.key or None) from None


# --- Reading -------------------------------------------------------------------------------


def bundle_open(data: bytes, *, mek: bytes, now: datetime, own_address: str | None = None) -> OpenedBundle:
    """Open and check a joining bundle with the cluster's MEK at ``now`` (aware). When
    ``own_address`` is given, the bundle must be bound to it. Raises ``BundleError``
    for any fault in ``data``; ``ValueError``/``TypeError`` only for a caller's mistake
    (a MEK that is not 32 bytes, a naive ``now``, ``data`` that is not bytes)."""
    mek = _check_mek(mek)
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("a joining bundle is bytes")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if len(data) > MAX_BYTES:
        raise BundleError(
            "too_large", f"The file is too large to be a joining bundle (the limit is {MAX_BYTES // 1024} KiB)."
        )
    if not bytes(data).strip():
        raise BundleError("empty", "The file is empty.")
    document = _load_json(bytes(data))

    if isinstance(document, dict) and document.get("format") == LICENCE_FORMAT:
        raise BundleError(
            "not_a_bundle",
            "This is a pamportal licence file, not a joining bundle. "
            "On the leader, generate a joining bundle for this node and upload that.",
        )
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BundleError("not_a_bundle", "This file is not a pamportal joining bundle.")
    if "version" in document:
        version = document["version"]
        if type(version) is not int or version != VERSION:
            shown = json.dumps(version)[:20]
            raise BundleError(
                "unsupported_version",
                f"This joining bundle has format version {shown}; this console reads version {VERSION}.",
                "version",
            )
    _exact_fields(document, TOP_FIELDS, "")
    header = _parse_header(document["header"])
    try:
        nonce = _b64url(document["nonce"], "nonce")
        if len(nonce) != NONCE_BYTES:
            raise _bad("nonce", f"must be {NONCE_BYTES} bytes (it is {len(nonce)})")
        ciphertext = _b64url(document["ciphertext"], "ciphertext")
        if len(ciphertext) < TAG_BYTES + 2:  # the tag and at least "{}"
            raise _bad("ciphertext", "is too short to hold a bundle (the file is cut short)")

        if not hmac.compare_digest(_mek_check(mek), header.mek_check):
            raise BundleError(
                "wrong_mek",
                "The Master Encryption Key does not open this bundle (wrong MEK). "
                "Type the MEK of the cluster whose leader made the bundle.",
            )
        aad = _aad(document["format"], document["version"], document["header"])
        try:
            plaintext = AESGCM(_body_key(mek, header.salt)).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise BundleError(
                "tampered",
                "The bundle was changed after it was made (tampered). Generate a new one on the leader.",
            ) from None

        # Authenticated from here on, and still parsed as strictly.
        bad_body = BundleError(
            "bad_body", "The bundle opened with this MEK, but what it holds is not a joining bundle's contents.", "body"
        )
        try:
            body = strictjson.load(plaintext, max_depth=MAX_DEPTH)
        except strictjson.Refused as refused:
            if refused.code not in _BODY_MESSAGES:  # not JSON, not UTF-8, duplicates, NaN
                raise bad_body from None
            message = _BODY_MESSAGES[refused.code].format(**refused.fields())
            raise BundleError(refused.code, message, "body") from None
        if not isinstance(body, dict):
            raise bad_body
        fields = _parse_body(body, now)

        if now >= header.expires:
            raise BundleError(
                "expired",
                f"This bundle expired at {format_when(header.expires)}; generate a new one on the leader.",
                "header.expires",
            )
        if header.created > now + CLOCK_SKEW:
            raise BundleError(
                "not_yet_valid",
                f"This bundle was made at {format_when(header.created)}, later than this node's clock "
                f"({format_when(now)}); check that both nodes keep time with NTP.",
                "header.created",
            )
        if own_address is not None and normalize_address(own_address) != fields["follower_address"]:
            raise BundleError(
                "wrong_address",
                f"This bundle is for {fields['follower_address']}, not for this node ({own_address.strip()[:253]}).",
                "body.follower_address",
            )
    except BundleError as error:
        error.bundle_id = header.bundle_id
        raise
    return OpenedBundle(
        cluster_id=header.cluster_id,
        bundle_id=header.bundle_id,
        created=header.created,
        expires=header.expires,
        **fields,
    )


# --- Writing -------------------------------------------------------------------------------


def encrypt_document(
    *,
    mek: bytes,
    header: dict[str, Any],
    body: dict[str, Any] | bytes,
    nonce: bytes | None = None,
    format_: Any = FORMAT,
    version: Any = VERSION,
) -> bytes:
    """Encrypt ``body`` (a dict is written as canonical JSON) under the salt in
    ``header["kdf"]["salt"]`` and write the file. No checks: tests use it to make
    broken bundles with valid tags. ``bundle_create`` is the checked way."""
    salt = base64.urlsafe_b64decode(header["kdf"]["salt"] + "=" * (-len(header["kdf"]["salt"]) % 4))
    plaintext = canonical_json(body) if isinstance(body, dict) else body
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    ciphertext = AESGCM(_body_key(mek, salt)).encrypt(nonce, plaintext, _aad(format_, version, header))
    document = {
        "format": format_,
        "version": version,
        "header": header,
        "nonce": b64url_encode(nonce),
        "ciphertext": b64url_encode(ciphertext),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def bundle_header(*, mek: bytes, cluster_id: str, bundle_id: str, created: datetime, expires: datetime,
                  salt: bytes | None = None) -> dict[str, Any]:
    """The header dict for a bundle (unchecked; ``bundle_create`` checks it)."""
    return {
        "cluster_id": cluster_id,
        "bundle_id": bundle_id,
        "created": format_time(created),
        "expires": format_time(expires),
        "kdf": {"name": KDF_NAME, "salt": b64url_encode(os.urandom(SALT_DEFAULT) if salt is None else salt)},
        "mek_check": b64url_encode(_mek_check(_check_mek(mek))),
    }


def bundle_create(
    *,
    mek: bytes,
    cluster_id: str,
    bundle_id: str,
    leader_address: str,
    leader_ports: dict[str, int],
    ca_cert_pem: str,
    follower_address: str,
    leader_version: str,
    join_token: str,
    created: datetime,
    expires: datetime,
) -> bytes:
    """Write a joining bundle. Addresses are normalised; every field is checked with the
    same rules ``bundle_open`` applies (a ``BundleError`` names the field at fault), so
    the leader never hands out a file that a follower would refuse for its form.
    Times are kept to the second."""
    mek = _check_mek(mek)
    if created.tzinfo is None or expires.tzinfo is None:
        raise ValueError("created and expires must be timezone-aware")
    if isinstance(ca_cert_pem, bytes):
        ca_cert_pem = ca_cert_pem.decode("ascii")
    header = bundle_header(mek=mek, cluster_id=cluster_id, bundle_id=bundle_id, created=created, expires=expires)
    _parse_header(header)
    body = {
        "leader_address": normalize_address(leader_address) if isinstance(leader_address, str) else leader_address,
        "leader_ports": dict(leader_ports) if isinstance(leader_ports, dict) else leader_ports,
        "ca_cert_pem": ca_cert_pem,
        "join_token": join_token,
        "follower_address": normalize_address(follower_address) if isinstance(follower_address, str) else follower_address,
        "leader_version": leader_version,
    }
    _parse_body(body, None)
    data = encrypt_document(mek=mek, header=header, body=body)
    if len(data) > MAX_BYTES:
        raise BundleError("too_large", f"The bundle would be larger than {MAX_BYTES // 1024} KiB.")
    return data


# --- The join request proof ------------------------------------------------------------------


def join_proof(mek: bytes, request_bytes: bytes) -> str:
    """The follower's proof that it holds the MEK: HMAC-SHA256 over the exact request
    bytes (use ``canonical_json``), keyed with ``derive(MEK, "join-request-proof")``.
    Base64url, 43 characters."""
    if not isinstance(request_bytes, (bytes, bytearray)):
        raise TypeError("the request is bytes")
    key = mek_module.derive(_check_mek(mek), JOIN_PROOF_PURPOSE)
    return b64url_encode(hmac.new(key, bytes(request_bytes), hashlib.sha256).digest())


def join_proof_verify(mek: bytes, request_bytes: bytes, proof: Any) -> bool:
    """Whether ``proof`` is ``join_proof(mek, request_bytes)``, compared in constant
    time. Anything that is not a proof (wrong type, not ASCII) is simply False."""
    if not isinstance(proof, str) or not proof.isascii():
        return False
    expected = join_proof(mek, request_bytes)
    return hmac.compare_digest(expected.encode("ascii"), proof.encode("ascii"))
