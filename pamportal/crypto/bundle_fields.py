"""The joining bundle's form: its constants, its refusal (``BundleError``) and the
checks of every field of the header and the body, each naming the field at fault. Split
from ``pamportal.crypto.bundle``, which reads and writes the file and re-exports these
names; see its docstring for the format."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from pamportal.core.addresses import address_normalize, address_problem
from pamportal.crypto.licence import TIME_FORMAT, b64url_decode, utc_time_parse

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

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_VERSION_RE = re.compile(r"(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})")
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



# --- Small helpers ------------------------------------------------------------------------


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(TIME_FORMAT)


def format_when(moment: datetime) -> str:
    """A moment as an operator reads it in a message."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")



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
    moment = utc_time_parse(value)
    if moment is None:
        raise _bad(path, "must be a UTC time written like 2026-01-31T00:00:00Z")
    return moment


def _b64url(value: Any, path: str) -> bytes:
    """Unpadded base64url in its one canonical spelling, or a refusal."""
    if not isinstance(value, str):
        raise _bad(path, "must be text (base64url)")
    raw = b64url_decode(value)
    if raw is None:
        raise BundleError("bad_encoding", f'The "{path}" field is not valid base64url.', path)
    return raw


def _address(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, "must be text (an FQDN or an IP address)")
    problem = address_problem(value)
    if problem:
        raise _bad(path, f"must be an FQDN or an IP address: “{value[:80]}” {problem}")
    if address_normalize(value) != value:
        raise _bad(path, f"must be written as {address_normalize(value)[:80]}")
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
