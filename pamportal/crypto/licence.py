"""The licence file: a JSON envelope around a vendor-signed JSON payload, parsed
strictly (no Django here).

A licence file is UTF-8 JSON, exactly::

    {"format": "pamportal-licence", "version": 1, "key_id": "<vendor key id>",
     "payload": "<base64url, unpadded, of the payload's JSON bytes>",
     "signature": "<base64url, unpadded, Ed25519 signature>"}

The signature covers ``SIGNING_CONTEXT + payload bytes``: the vendor key also signs
other things (upgrade packages), and the context keeps a signature made for one of
them from ever passing as a licence. The payload holds exactly ``PAYLOAD_FIELDS``.

Everything is checked in an order that never trusts what is not yet verified: size,
encoding, JSON shape (bounded depth, no duplicate keys), the envelope's exact fields,
the key, the signature, and only then the payload's fields and the validity window.
Each refusal is a ``LicenceError`` with a stable ``code`` and an operator-facing
message.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pamportal.crypto import strictjson

FORMAT = "pamportal-licence"
VERSION = 1
PRODUCT = "pamportal"
SIGNING_CONTEXT = b"pamportal-licence/v1\x00"
# A real licence is well under 2 KiB; the limit leaves room for long feature lists
# while keeping every later step (JSON, base64, the depth scan) cheap.
MAX_BYTES = 64 * 1024
# The deepest a licence ever nests is 2 (the payload's feature list); a little room
# is left so that an unexpected field is reported by name, not as "too deep".
MAX_DEPTH = 4
MAX_NODES_LIMIT = 10_000
MAX_FEATURES = 64

ENVELOPE_FIELDS = ("format", "version", "key_id", "payload", "signature")
PAYLOAD_FIELDS = (
    "licence_id", "product", "customer", "edition", "max_nodes", "features", "not_before", "not_after",
)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_LICENCE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_FEATURE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")

# --- Vendor keys ---------------------------------------------------------------------------
# The production vendor key. Only its public half is here: the private key is not in
# this repository (nor anywhere on a node); the vendor signs licences offline.
VENDOR_KEY_ID = "pamportal-vendor-2026"
VENDOR_PUBLIC_KEY = "_gygGe9jTQhhm6MfUgiK7zlxdOK9RzsR9qPIqRs3oqE"

# The TEST vendor key: its private half is public knowledge (it is right here), so a
# licence it signs proves nothing. Accepted only when the caller allows test keys,
# which the portal never does under production settings.
TEST_VENDOR_KEY_ID = "pamportal-test-vendor"
TEST_VENDOR_PUBLIC_KEY = "CIJYhkfNd91PphZ6bXw4G0D0TTrixYtwFRuTLR5BIXY"
TEST_VENDOR_PRIVATE_KEY = "JJ02zxvHXHJPAi3q-VxXaDgYBIyB2wN7Z475QtXlGPo"


@dataclass(frozen=True)
class VendorKey:
    key_id: str
    public_key: str  # base64url of the raw 32-byte Ed25519 public key
    test: bool


VENDOR_KEYS: dict[str, VendorKey] = {
    VENDOR_KEY_ID: VendorKey(VENDOR_KEY_ID, VENDOR_PUBLIC_KEY, test=False),
    TEST_VENDOR_KEY_ID: VendorKey(TEST_VENDOR_KEY_ID, TEST_VENDOR_PUBLIC_KEY, test=True),
}


class LicenceError(Exception):
    """A licence file refused; ``code`` is stable, ``message`` is for the operator and
    ``field`` names the field at fault where there is one."""

    def __init__(self, code: str, message: str, *, field: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class VerifiedLicence:
    """The payload of a licence whose signature has been verified."""

    licence_id: str
    product: str
    customer: str
    edition: str
    max_nodes: int
    features: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    key_id: str
    test_key: bool

    def check_validity(self, now: datetime) -> None:
        """Refuse outside [not_before, not_after): a licence ends at ``not_after``."""
        if now < self.not_before:
            raise LicenceError("not_yet_valid", f"This licence is not valid until {format_when(self.not_before)}.")
        if now >= self.not_after:
            raise LicenceError("expired", f"This licence expired on {format_when(self.not_after)}.")

    def time_left(self, now: datetime) -> timedelta:
        return self.not_after - now

    def canonical(self) -> bytes:
        """The verified payload (and the key that signed it) in its one spelling: two
        files that differ only where the signature does not reach (whitespace, key
        order of the envelope) give the same bytes."""
        return json.dumps(
            {
                "licence_id": self.licence_id, "product": self.product, "customer": self.customer,
                "edition": self.edition, "max_nodes": self.max_nodes, "features": list(self.features),
                "not_before": format_time(self.not_before), "not_after": format_time(self.not_after),
                "key_id": self.key_id,
            },
            sort_keys=True, separators=(",", ":"), ensure_ascii=True,
        ).encode("ascii")


def format_when(moment: datetime) -> str:
    """A date as an operator reads it: the day, plus the time when it is not midnight."""
    moment = moment.astimezone(timezone.utc)
    if (moment.hour, moment.minute, moment.second) == (0, 0, 0):
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


# --- Encoding helpers -------------------------------------------------------------------------


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(value: Any) -> bytes | None:
    """Unpadded base64url in its one canonical spelling, or None (the rule both the
    licence and the joining bundle apply)."""
    if not isinstance(value, str) or not _B64URL_RE.fullmatch(value) or len(value) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if b64url_encode(raw) == value else None  # not: stray bits in the last character


def utc_time_parse(value: Any) -> datetime | None:
    """A UTC time written exactly like 2026-01-31T00:00:00Z, or None."""
    if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
        return None
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _b64url_decode(value: str, field: str) -> bytes:
    raw = b64url_decode(value)
    if raw is None:
        raise LicenceError("bad_encoding", f'The "{field}" field is not valid base64url.', field=field)
    return raw


_JSON_MESSAGES = {
    strictjson.BOM: "The file starts with a byte-order mark; a licence file is plain UTF-8 JSON without one. "
                    "Upload the file exactly as the vendor sent it.",
    strictjson.NOT_UTF8: "The file is not UTF-8 text; a licence file is a UTF-8 JSON document.",
    strictjson.TOO_DEEP: f"The file nests JSON more than {MAX_DEPTH} levels deep; a licence nests at most 2.",
    strictjson.DUPLICATE_KEY: 'The file names the field "{key}" more than once.',
    strictjson.LONE_SURROGATE: "The file holds text that is not valid Unicode in {where}: a \\uD800-\\uDFFF escape "
                               "without its pair (a lone surrogate). A licence file never does.",
    strictjson.NUL_CHARACTER: "The file holds a NUL character (\\u0000) in {where}. A licence file never does.",
    strictjson.NUMBER_TOO_LARGE: "The file holds a number far larger than any in a licence ({detail}).",
    strictjson.NOT_JSON: "The file is not valid JSON{at}.",
}
# Refusals of the payload's JSON that say more than "not a JSON object".
_PAYLOAD_OWN_CODES = frozenset({
    strictjson.DUPLICATE_KEY, strictjson.TOO_DEEP, strictjson.NUMBER_TOO_LARGE, strictjson.LONE_SURROGATE,
    strictjson.NUL_CHARACTER,
})


def _load_json(data: bytes) -> Any:
    """Strict UTF-8 JSON (``strictjson.load``), each refusal with the licence's message."""
    try:
        return strictjson.load(data, max_depth=MAX_DEPTH)
    except strictjson.Refused as refused:
        message = _JSON_MESSAGES[refused.code].format(**refused.fields())
        raise LicenceError(refused.code, message, field=refused.key) from None


def _exact_fields(obj: dict[str, Any], expected: Iterable[str], where: str) -> None:
    expected = tuple(expected)
    for name in expected:
        if name not in obj:
            raise LicenceError("missing_field", f'The licence {where} has no "{name}" field.', field=name)
    extra = sorted(set(obj) - set(expected))
    if extra:
        name = extra[0][:64]
        raise LicenceError("extra_field", f'The licence {where} has an unexpected field "{name}".', field=name)


def _bad(field: str, rule: str) -> LicenceError:
    return LicenceError("bad_field", f'The "{field}" field {rule}.', field=field)


def _text(payload: dict[str, Any], field: str, max_length: int) -> str:
    value = payload[field]
    rule = f"must be 1 to {max_length} printable characters, with no spaces at either end"
    if not isinstance(value, str) or not (1 <= len(value) <= max_length) or value != value.strip():
        raise _bad(field, rule)
    if any(not char.isprintable() for char in value):
        raise _bad(field, rule)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate written as a \\u escape
        raise _bad(field, rule) from None
    return value


def _time(payload: dict[str, Any], field: str) -> datetime:
    moment = utc_time_parse(payload[field])
    if moment is None:
        raise _bad(field, "must be a UTC time written like 2026-01-31T00:00:00Z")
    return moment


def _payload_fields(payload: dict[str, Any], key: VendorKey) -> VerifiedLicence:
    _exact_fields(payload, PAYLOAD_FIELDS, "payload")
    licence_id = payload["licence_id"]
    if not isinstance(licence_id, str) or not _LICENCE_ID_RE.fullmatch(licence_id):
        raise _bad("licence_id", "must be 1 to 64 letters, digits, dots, colons, dashes or underscores")
    product = payload["product"]
    if not isinstance(product, str):
        raise _bad("product", "must be text")
    if product != PRODUCT:
        raise LicenceError(
            "wrong_product", f'This licence is for another product ("{product[:64]}"), not for pamportal.', field="product"
        )
    customer = _text(payload, "customer", 200)
    edition = _text(payload, "edition", 64)
    max_nodes = payload["max_nodes"]
    if type(max_nodes) is not int or not (1 <= max_nodes <= MAX_NODES_LIMIT):
        raise _bad("max_nodes", f"must be a whole number from 1 to {MAX_NODES_LIMIT}")
    features = payload["features"]
    rule = f"must be a list of at most {MAX_FEATURES} distinct names (lower-case letters, digits, . _ -)"
    if not isinstance(features, list) or len(features) > MAX_FEATURES:
        raise _bad("features", rule)
    if any(not isinstance(f, str) or not _FEATURE_RE.fullmatch(f) for f in features) or len(set(features)) != len(features):
        raise _bad("features", rule)
    not_before = _time(payload, "not_before")
    not_after = _time(payload, "not_after")
    if not_after <= not_before:
        raise _bad("not_after", "must be later than not_before")
    return VerifiedLicence(
        licence_id=licence_id,
        product=product,
        customer=customer,
        edition=edition,
        max_nodes=max_nodes,
        features=tuple(features),
        not_before=not_before,
        not_after=not_after,
        key_id=key.key_id,
        test_key=key.test,
    )


# --- Reading -----------------------------------------------------------------------------------


def verify_licence(data: bytes, *, allow_test_keys: bool = False) -> VerifiedLicence:
    """Check everything except the validity window; raise ``LicenceError`` on any fault."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("a licence file is bytes")
    if len(data) > MAX_BYTES:
        raise LicenceError("too_large", f"The file is too large to be a licence (the limit is {MAX_BYTES // 1024} KiB).")
    if not data.strip():
        raise LicenceError("empty", "The file is empty.")
    document = _load_json(bytes(data))

    not_a_licence = LicenceError("not_a_licence", "This file is not a pamportal licence.")
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise not_a_licence
    _exact_fields(document, ENVELOPE_FIELDS, "file")
    version = document["version"]
    if type(version) is not int or version != VERSION:
        shown = json.dumps(version)[:20]
        raise LicenceError(
            "unsupported_version",
            f"This licence file has format version {shown}; this console reads version {VERSION}.",
            field="version",
        )
    for name in ("key_id", "payload", "signature"):
        if not isinstance(document[name], str):
            raise _bad(name, "must be text")

    key = VENDOR_KEYS.get(document["key_id"])
    if key is None:
        shown = document["key_id"][:64]
        raise LicenceError("unknown_key", f'The licence was signed by an unknown key ("{shown}").', field="key_id")
    if key.test and not allow_test_keys:
        raise LicenceError(
            "test_key",
            "This licence is signed with the test vendor key, which a production node refuses. "
            "Ask the vendor for your licence file.",
            field="key_id",
        )
    signature = _b64url_decode(document["signature"], "signature")
    if len(signature) != 64:
        raise LicenceError(
            "bad_signature", "The licence signature is malformed (an Ed25519 signature is 64 bytes).", field="signature"
        )
    payload_bytes = _b64url_decode(document["payload"], "payload")
    public_key = Ed25519PublicKey.from_public_bytes(_b64url_decode(key.public_key, "public key"))
    try:
        public_key.verify(signature, SIGNING_CONTEXT + payload_bytes)
    except InvalidSignature:
        raise LicenceError(
            "tampered", "The licence has been altered: its signature does not match its contents."
        ) from None

    # Signed by the vendor from here on, and still parsed as strictly.
    try:
        payload = _load_json(payload_bytes)
    except LicenceError as error:
        if error.code in _PAYLOAD_OWN_CODES:
            raise
        raise LicenceError("bad_payload", "The licence payload is not a JSON object.") from None
    if not isinstance(payload, dict):
        raise LicenceError("bad_payload", "The licence payload is not a JSON object.")
    return _payload_fields(payload, key)


def parse_licence(data: bytes, *, now: datetime, allow_test_keys: bool = False) -> VerifiedLicence:
    """``verify_licence`` and then the validity window at ``now`` (aware)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    licence = verify_licence(data, allow_test_keys=allow_test_keys)
    licence.check_validity(now)
    return licence


# --- Writing (the test key only, in this repository) ----------------------------------------


def vendor_test_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_b64url_decode(TEST_VENDOR_PRIVATE_KEY, "private key"))


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(TIME_FORMAT)


def sign_document(
    payload: dict[str, Any] | bytes,
    *,
    private_key: Ed25519PrivateKey | None = None,
    key_id: str = TEST_VENDOR_KEY_ID,
) -> bytes:
    """Wrap and sign a payload (a dict is written as canonical JSON). No checks: tests
    use it to make broken licences with valid signatures."""
    if isinstance(payload, dict):
        payload = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("ascii")
    key = private_key or vendor_test_private_key()
    document = {
        "format": FORMAT,
        "version": VERSION,
        "key_id": key_id,
        "payload": b64url_encode(payload),
        "signature": b64url_encode(key.sign(SIGNING_CONTEXT + payload)),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def licence_payload(
    *,
    customer: str,
    edition: str,
    max_nodes: int,
    not_before: datetime,
    not_after: datetime,
    features: Iterable[str] = (),
    licence_id: str | None = None,
    product: str = PRODUCT,
) -> dict[str, Any]:
    return {
        "licence_id": licence_id or str(uuid.uuid4()),
        "product": product,
        "customer": customer,
        "edition": edition,
        "max_nodes": max_nodes,
        "features": list(features),
        "not_before": format_time(not_before),
        "not_after": format_time(not_after),
    }


def mint(
    *,
    customer: str,
    edition: str,
    max_nodes: int,
    not_before: datetime,
    not_after: datetime,
    features: Iterable[str] = (),
    licence_id: str | None = None,
) -> bytes:
    """A licence file signed with the TEST vendor key (tests and development only)."""
    payload = licence_payload(
        customer=customer,
        edition=edition,
        max_nodes=max_nodes,
        not_before=not_before,
        not_after=not_after,
        features=features,
        licence_id=licence_id,
    )
    return sign_document(payload)
