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
import binascii
import hashlib
import hmac
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pamportal.crypto import mek as mek_module
from pamportal.crypto import strictjson
from pamportal.crypto.licence import FORMAT as LICENCE_FORMAT
from pamportal.crypto.licence import b64url_encode

FORMAT = "pamportal-joining-bundle"
VERSION = 1
# A real bundle is about 2 KiB (most of it the CA certificate); the limit keeps every
# later step (depth scan, JSON, base64, AES) cheap.
MAX_BYTES = 64 * 1024
# A bundle nests 3 deep (file > header > kdf; body > leader_ports is 2). A little room
# is left so that an unexpected nested field is reported by name, not as "too deep".
MAX_DEPTH = 5
KDF_NAME = "HKDF-SHA256"
BODY_KEY_INFO = b"pamportal joining bundle v1"
MEK_CHECK_PURPOSE = "bundle-mek-check"
MEK_CHECK_INPUT = b"pamportal joining bundle mek check v1"
JOIN_PROOF_PURPOSE = "join-request-proof"
SALT_MIN, SALT_MAX, SALT_DEFAULT = 16, 32, 32
NONCE_BYTES = 12
TAG_BYTES = 16
MEK_CHECK_BYTES = 32
TOKEN_BYTES = 32
MAX_CA_PEM = 16 * 1024
# Clocks within a cluster may disagree a little; a bundle "made in the future" by more
# than this is refused (the clocks need fixing before a join can work anyway).
CLOCK_SKEW = timedelta(minutes=2)

TOP_FIELDS = ("format", "version", "header", "nonce", "ciphertext")
HEADER_FIELDS = ("cluster_id", "bundle_id", "created", "expires", "kdf", "mek_check")
KDF_FIELDS = ("name", "salt")
BODY_FIELDS = (
    "leader_address", "leader_ports", "ca_cert_pem", "join_token", "follower_address", "leader_version",
)
PORT_FIELDS = ("setup_api", "etcd_client", "etcd_peer", "https", "delegation")
DEFAULT_PORTS = {"setup_api": 2390, "etcd_client": 2379, "etcd_peer": 2380, "https": 443, "delegation": 2391}

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_VERSION_RE = re.compile(r"(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})")
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
_PEM_CERT_BEGIN = "-----BEGIN CERTIFICATE-----"


class BundleError(Exception):
    """A joining bundle refused. ``code`` is stable, ``message`` is for the operator and
    ``field`` names the field at fault (a dotted path such as ``header.kdf.salt`` or
    ``body.join_token``) where there is one. ``bundle_id`` is the id the header claims,
    once the header has been read (for the audit event; it is not verified unless the
    code comes after the tag check: ``bad_body``, ``bad_ca``, ``expired``,
    ``not_yet_valid``, ``wrong_address``)."""

    def __init__(self, code: str, message: str, field: str | None = None, *, bundle_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.bundle_id = bundle_id

    def __repr__(self) -> str:
        return f"BundleError({self.code!r}, {self.message!r}, field={self.field!r})"


@dataclass(frozen=True)
class LeaderPorts:
    setup_api: int
    etcd_client: int
    etcd_peer: int
    https: int
    delegation: int

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in PORT_FIELDS}


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


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(TIME_FORMAT)


def format_when(moment: datetime) -> str:
    """A moment as an operator reads it in a message."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def canonical_json(value: Any) -> bytes:
    """The one byte encoding of a JSON value that both ends compute: sorted keys, no
    spaces, ASCII only. Used for the AAD, the body and join requests."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def new_join_token() -> str:
    """A fresh single-use join token: 32 random bytes, base64url."""
    return b64url_encode(os.urandom(TOKEN_BYTES))


def token_hash(token: str) -> str:
    """What the leader stores instead of a join token: SHA-256, hex."""
    if not isinstance(token, str):
        raise TypeError("a join token is text")
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def normalize_address(address: str) -> str:
    """A node address in its one spelling: an IP as ``ipaddress`` writes it (no
    brackets), a name in lower case without a trailing dot."""
    text = address.strip()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return text.lower().rstrip(".")


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a node address (an FQDN or an IP), or None."""
    if not address:
        return "is empty"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.is_unspecified:
            return "is the wildcard address"
        if ip.is_multicast:
            return "is a multicast address"
        return None
    if len(address) > 253:
        return "is longer than 253 characters"
    labels = address.split(".")
    if all(label.isdigit() for label in labels):
        return "looks like an IPv4 address but is not one"
    if any(not _LABEL_RE.fullmatch(label) for label in labels):
        return "is not a valid host name (letters, digits and inner hyphens, dot-separated)"
    if len(labels) < 2:
        return "is not fully qualified (it needs a domain, like node1.example.com)"
    if labels[-1].isdigit():
        return "is not a valid host name (the last part cannot be all digits)"
    return None


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


_BAD_TEXT = {
    strictjson.LONE_SURROGATE: "The file holds text that is not valid Unicode in {where}: a \\uD800-\\uDFFF escape "
                               "without its pair (a lone surrogate). A joining bundle never does.",
    strictjson.NUL_CHARACTER: "The file holds a NUL character (\\u0000) in {where}. A joining bundle never does.",
}


def _load_json(data: bytes) -> Any:
    """Strict UTF-8 JSON: no BOM, bounded depth, no duplicate keys, no NaN/Infinity, no
    huge numbers, no lone surrogate or NUL in any text."""
    if data.startswith(_UTF8_BOM):
        raise BundleError(
            "bom",
            "The file starts with a byte-order mark; a joining bundle is plain UTF-8 JSON without one. "
            "Upload the file exactly as the leader produced it.",
        )
    not_utf8 = BundleError("not_utf8", "The file is not UTF-8 text; a joining bundle is a UTF-8 JSON document.")
    if data.startswith(_UTF16_32_BOMS) or b"\x00" in data:
        raise not_utf8  # UTF-16/32 or binary: NUL never appears in a bundle
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise not_utf8 from None
    if strictjson.too_deep(text, MAX_DEPTH):
        raise BundleError(
            "too_deep", f"The file nests JSON more than {MAX_DEPTH} levels deep; a joining bundle nests at most 3."
        )
    try:
        return strictjson.loads(text)
    except strictjson.DuplicateKey as duplicate:
        name = duplicate.key[:64]
        raise BundleError("duplicate_key", f'The file names the field "{name}" more than once.', name) from None
    except strictjson.BadText as bad:
        raise BundleError(bad.problem, _BAD_TEXT[bad.problem].format(where=bad.where)) from None
    except strictjson.NumberTooLarge as large:
        raise BundleError(
            "number_too_large", f"The file holds a number far larger than any in a joining bundle ({large})."
        ) from None
    except json.JSONDecodeError as error:
        raise BundleError(
            "not_json", f"The file is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})."
        ) from None
    except (ValueError, RecursionError):  # NaN, integers too long to convert
        raise BundleError("not_json", "The file is not valid JSON.") from None


# --- Field checks --------------------------------------------------------------------------


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _exact_fields(obj: dict[str, Any], expected: Iterable[str], prefix: str) -> None:
    expected = tuple(expected)
    for name in expected:
        if name not in obj:
            path = _path(prefix, name)
            raise BundleError("missing_field", f'The bundle has no "{path}" field.', path)
    extra = sorted(set(obj) - set(expected))
    if extra:
        path = _path(prefix, extra[0][:64])
        raise BundleError("extra_field", f'The bundle has an unexpected field "{path}".', path)


def _bad(path: str, rule: str) -> BundleError:
    return BundleError("bad_field", f'The "{path}" field {rule}.', path)


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(path, "must be a JSON object")
    return value


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, "must be text")
    return value


def _identifier(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise _bad(path, "must be 1 to 64 letters, digits, dots, colons, dashes or underscores")
    return value


def _time(value: Any, path: str) -> datetime:
    rule = "must be a UTC time written like 2026-01-31T00:00:00Z"
    if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
        raise _bad(path, rule)
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise _bad(path, rule) from None


def _b64url(value: Any, path: str) -> bytes:
    """Unpadded base64url in its one canonical spelling, or a refusal."""
    if not isinstance(value, str):
        raise _bad(path, "must be text (base64url)")
    error = BundleError("bad_encoding", f'The "{path}" field is not valid base64url.', path)
    if not _B64URL_RE.fullmatch(value) or len(value) % 4 == 1:
        raise error
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise error from None
    if b64url_encode(raw) != value:  # stray bits in the last character
        raise error
    return raw


def _address(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, "must be text (an FQDN or an IP address)")
    problem = address_problem(value)
    if problem:
        raise _bad(path, f"must be an FQDN or an IP address: “{value[:80]}” {problem}")
    if normalize_address(value) != value:
        raise _bad(path, f"must be written as {normalize_address(value)[:80]}")
    return value


def _ports(value: Any, path: str) -> LeaderPorts:
    ports = _object(value, path)
    _exact_fields(ports, PORT_FIELDS, path)
    for name in PORT_FIELDS:
        port = ports[name]
        if type(port) is not int or not (1 <= port <= 65535):
            raise _bad(_path(path, name), "must be a port number from 1 to 65535")
    if len({ports[name] for name in PORT_FIELDS}) != len(PORT_FIELDS):
        raise _bad(path, "must give a different port to each service")
    return LeaderPorts(**{name: ports[name] for name in PORT_FIELDS})


def _bad_ca(rule: str) -> BundleError:
    return BundleError("bad_ca", f"The cluster CA certificate in the bundle {rule}.", "body.ca_cert_pem")


def _ca_certificate(value: Any, now: datetime | None) -> tuple[str, str]:
    """The CA PEM and its SHA-256, once it is one self-signed CA certificate."""
    if not isinstance(value, str):
        raise _bad_ca("must be PEM text")
    if not value.strip():
        raise _bad_ca("is empty")
    if len(value) > MAX_CA_PEM:
        raise _bad_ca(f"is too long (more than {MAX_CA_PEM // 1024} KiB)")
    if "PRIVATE KEY" in value:
        raise _bad_ca("comes with a private key, which must never leave the leader; the bundle is refused")
    if value.count(_PEM_CERT_BEGIN) != 1:
        if _PEM_CERT_BEGIN not in value:
            raise _bad_ca("is not a PEM certificate")
        raise _bad_ca("must be exactly one certificate")
    try:
        certificate = x509.load_pem_x509_certificate(value.encode("ascii"))
    except Exception:  # noqa: BLE001 - any parse failure (ASCII, PEM, DER) means "not a certificate"
        raise _bad_ca("is not a PEM certificate") from None
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    except Exception:  # noqa: BLE001 - malformed extensions
        raise _bad_ca("is not a PEM certificate") from None
    if not is_ca:
        raise _bad_ca("is not a CA certificate (its basic constraints do not say CA)")
    try:
        certificate.verify_directly_issued_by(certificate)
    except Exception:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError
        raise _bad_ca("is not self-signed, so it is not a cluster CA") from None
    if now is not None:
        if now < certificate.not_valid_before_utc - CLOCK_SKEW:
            raise _bad_ca(f"is not valid until {format_when(certificate.not_valid_before_utc)}")
        if now >= certificate.not_valid_after_utc:
            raise _bad_ca(f"expired at {format_when(certificate.not_valid_after_utc)}")
    return value, certificate.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class _Header:
    cluster_id: str
    bundle_id: str
    created: datetime
    expires: datetime
    salt: bytes
    mek_check: bytes


def _parse_header(value: Any) -> _Header:
    header = _object(value, "header")
    _exact_fields(header, HEADER_FIELDS, "header")
    cluster_id = _identifier(header["cluster_id"], "header.cluster_id")
    bundle_id = _identifier(header["bundle_id"], "header.bundle_id")
    created = _time(header["created"], "header.created")
    expires = _time(header["expires"], "header.expires")
    if expires <= created:
        raise _bad("header.expires", "must be later than header.created")
    kdf = _object(header["kdf"], "header.kdf")
    _exact_fields(kdf, KDF_FIELDS, "header.kdf")
    name = _text(kdf["name"], "header.kdf.name")
    if name != KDF_NAME:
        raise _bad("header.kdf.name", f'must be "{KDF_NAME}"')
    salt = _b64url(kdf["salt"], "header.kdf.salt")
    if not (SALT_MIN <= len(salt) <= SALT_MAX):
        raise _bad("header.kdf.salt", f"must be {SALT_MIN} to {SALT_MAX} bytes (it is {len(salt)})")
    mek_check = _b64url(header["mek_check"], "header.mek_check")
    if len(mek_check) != MEK_CHECK_BYTES:
        raise _bad("header.mek_check", f"must be {MEK_CHECK_BYTES} bytes (it is {len(mek_check)})")
    return _Header(cluster_id, bundle_id, created, expires, salt, mek_check)


def _parse_body(body: dict[str, Any], now: datetime | None) -> dict[str, Any]:
    _exact_fields(body, BODY_FIELDS, "body")
    leader_address = _address(body["leader_address"], "body.leader_address")
    leader_ports = _ports(body["leader_ports"], "body.leader_ports")
    ca_cert_pem, ca_sha256 = _ca_certificate(body["ca_cert_pem"], now)
    token = _b64url(body["join_token"], "body.join_token")
    if len(token) != TOKEN_BYTES:
        raise _bad("body.join_token", f"must be {TOKEN_BYTES} bytes (it is {len(token)})")
    follower_address = _address(body["follower_address"], "body.follower_address")
    leader_version = body["leader_version"]
    if not isinstance(leader_version, str) or not _VERSION_RE.fullmatch(leader_version):
        raise _bad("body.leader_version", "must be a version written major.feature.patch, like 3.1.4")
    return {
        "leader_address": leader_address,
        "leader_ports": leader_ports,
        "ca_cert_pem": ca_cert_pem,
        "ca_sha256": ca_sha256,
        "join_token": body["join_token"],
        "follower_address": follower_address,
        "leader_version": leader_version,
    }


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
            body_text = plaintext.decode("utf-8")
            if strictjson.too_deep(body_text, MAX_DEPTH):
                raise BundleError("too_deep", f"The bundle's contents nest JSON more than {MAX_DEPTH} levels deep; "
                                  "a joining bundle nests at most 3.", "body")
            body = strictjson.loads(body_text)
        except strictjson.BadText as bad:
            raise BundleError(bad.problem, _BAD_TEXT[bad.problem].format(where=bad.where), "body") from None
        except strictjson.NumberTooLarge as large:
            raise BundleError("number_too_large", "The bundle's contents hold a number far larger than any in a "
                              f"joining bundle ({large}).", "body") from None
        except (ValueError, RecursionError):  # JSON, UTF-8, duplicates, NaN
            raise bad_body from None
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
