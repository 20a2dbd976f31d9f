"""A corpus of broken licence files, each with the refusal it must get.

Every case is built from a good licence signed with the test vendor key, so a case
breaks exactly one thing. Payload faults are re-signed with the test key, so they
reach the field checks instead of stopping at the signature.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pamportal.crypto import licence as fmt

NOW = datetime.now(timezone.utc).replace(microsecond=0)
NOT_BEFORE = NOW - timedelta(days=1)
NOT_AFTER = NOW + timedelta(days=365)
# A second key, not the vendor's: "re-signed with another key".
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    code: str
    text: str  # the operator-facing message must contain this


def good_payload(**changes) -> dict:
    payload = fmt.licence_payload(
        customer="Corpus Corp",
        edition="enterprise",
        max_nodes=5,
        features=["audit-export", "sso"],
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        licence_id="LIC-CORPUS-1",
    )
    payload.update(changes)
    return payload


def good_licence() -> bytes:
    return fmt.sign_document(good_payload())


def _envelope(data: bytes) -> dict:
    return json.loads(data)


def _dump(document) -> bytes:
    return json.dumps(document, indent=2).encode("utf-8")


def _with(**changes) -> bytes:
    document = _envelope(good_licence())
    document.update(changes)
    return _dump(document)


def _without(name: str) -> bytes:
    document = _envelope(good_licence())
    del document[name]
    return _dump(document)


def _b64(raw: bytes) -> str:
    return fmt.b64url_encode(raw)


def _flip(value: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    raw[index] ^= 0x01
    return _b64(bytes(raw))


def _signed_payload_without(name: str) -> bytes:
    payload = good_payload()
    del payload[name]
    return fmt.sign_document(payload)


def _bad_field(name: str, value) -> bytes:
    return fmt.sign_document(good_payload(**{name: value}))


def _when(moment: datetime) -> str:
    return fmt.format_when(moment)


NOT_UTF8 = "The file is not UTF-8 text; a licence file is a UTF-8 JSON document."
NOT_JSON = "The file is not valid JSON"
NOT_A_LICENCE = "This file is not a pamportal licence."
TOO_DEEP = "The file nests JSON more than 4 levels deep; a licence nests at most 2."
TOO_LARGE = "The file is too large to be a licence (the limit is 64 KiB)."
TAMPERED = "The licence has been altered: its signature does not match its contents."
BAD_PAYLOAD = "The licence payload is not a JSON object."
MAX_NODES = 'The "max_nodes" field must be a whole number from 1 to 10000.'
FEATURES = 'The "features" field must be a list of at most 64 distinct names'
TIME = "must be a UTC time written like 2026-01-31T00:00:00Z."


def _text_rule(field: str, length: int) -> str:
    return f'The "{field}" field must be 1 to {length} printable characters, with no spaces at either end.'


def build() -> list[Case]:
    good = good_licence()
    stripped = good.rstrip()
    document = _envelope(good)
    cases: list[Case] = []

    def add(name, data, code, text):
        cases.append(Case(name, data, code, text))

    # Size and encoding.
    add("empty", b"", "empty", "The file is empty.")
    add("only-whitespace", b"  \n\t\n", "empty", "The file is empty.")
    add("over-the-limit", stripped + b" " * (fmt.MAX_BYTES + 1 - len(stripped)), "too_large", TOO_LARGE)
    add("huge-2MiB", b"{" + b"\"a\": 1, " * (2 * 1024 * 1024 // 8) + b"}", "too_large", TOO_LARGE)
    add("nested-100k", b"[" * 100_000, "too_large", TOO_LARGE)
    add("binary-png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not_utf8", NOT_UTF8)
    add("binary-random", bytes((i * 167 + 13) % 256 for i in range(3000)), "not_utf8", NOT_UTF8)
    add("latin-1", '{"format": "pamportal-licence", "customer": "Soci\u00e9t\u00e9"}'.encode("latin-1"), "not_utf8", NOT_UTF8)
    add("utf-16-le-bom", good.decode().encode("utf-16"), "not_utf8", NOT_UTF8)
    add("utf-16-be", good.decode().encode("utf-16-be"), "not_utf8", NOT_UTF8)
    add("utf-32", good.decode().encode("utf-32"), "not_utf8", NOT_UTF8)
    add("nul-byte", stripped[:20] + b"\x00" + stripped[20:], "not_utf8", NOT_UTF8)
    add("overlong-utf8", b'{"format": "\xc0\xaf"}', "not_utf8", NOT_UTF8)
    add("utf8-surrogate", b'{"format": "\xed\xa0\x80"}', "not_utf8", NOT_UTF8)
    add("utf8-bom", b"\xef\xbb\xbf" + good, "bom", "The file starts with a byte-order mark")

    # Truncated at many points: never valid JSON.
    length = len(stripped)
    for cut in sorted({1, 2, 16, 40, 60, length // 3, length // 2, 2 * length // 3, length - 10, length - 2, length - 1}):
        add(f"truncated-at-{cut}", stripped[:cut], "not_json", NOT_JSON)

    # Not JSON, or JSON that is not a licence.
    add("plain-text", b"This is my licence, honest.\n", "not_json", NOT_JSON)
    add("html", b"<!doctype html><html><body>licence</body></html>", "not_json", NOT_JSON)
    add("trailing-garbage", stripped + b" x", "not_json", NOT_JSON)
    add("two-documents", stripped + b"\n" + stripped, "not_json", NOT_JSON)
    add("nan", b'{"format": "pamportal-licence", "version": NaN}', "not_json", NOT_JSON)
    add("single-quotes", b"{'format': 'pamportal-licence'}", "not_json", NOT_JSON)
    add("nested-arrays", b"[" * 30_000 + b"]" * 30_000, "too_deep", TOO_DEEP)
    add("nested-objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "too_deep", TOO_DEEP)
    add("nested-in-a-field", _with(comment=[[[[["deep"]]]]]), "too_deep", TOO_DEEP)
    add("json-array", b"[]", "not_a_licence", NOT_A_LICENCE)
    add("json-number", b"42", "not_a_licence", NOT_A_LICENCE)
    add("json-null", b"null", "not_a_licence", NOT_A_LICENCE)
    add("json-true", b"true", "not_a_licence", NOT_A_LICENCE)
    add("json-string", b'"pamportal-licence"', "not_a_licence", NOT_A_LICENCE)
    add("empty-object", b"{}", "not_a_licence", NOT_A_LICENCE)
    add("other-format", _with(format="pamportal-bundle"), "not_a_licence", NOT_A_LICENCE)
    add("format-not-text", _with(format=1), "not_a_licence", NOT_A_LICENCE)
    add("no-format", _without("format"), "not_a_licence", NOT_A_LICENCE)
    add("a-list-of-licences", b"[" + stripped + b"]", "not_a_licence", NOT_A_LICENCE)

    # Duplicate keys, outside and inside the signed payload.
    add(
        "duplicate-signature",
        stripped[:-1].rstrip() + b',\n  "signature": "' + document["signature"].encode() + b'"\n}',
        "duplicate_key",
        'The file names the field "signature" more than once.',
    )
    payload_bytes = json.dumps(good_payload(), sort_keys=True, separators=(",", ":")).encode()
    duplicated = payload_bytes[:-1] + b',"max_nodes":500}'
    add("duplicate-in-payload", fmt.sign_document(duplicated), "duplicate_key", 'The file names the field "max_nodes" more than once.')

    # The envelope.
    add("version-2", _with(version=2), "unsupported_version", "This licence file has format version 2; this console reads version 1.")
    add("version-text", _with(version="1"), "unsupported_version", 'This licence file has format version "1"; this console reads version 1.')
    add("version-float", _with(version=1.0), "unsupported_version", "This licence file has format version 1.0;")
    add("version-true", _with(version=True), "unsupported_version", "This licence file has format version true;")
    for name in ("version", "key_id", "payload", "signature"):
        add(f"missing-{name}", _without(name), "missing_field", f'The licence file has no "{name}" field.')
    add("extra-top-level", _with(comment="from sales"), "extra_field", 'The licence file has an unexpected field "comment".')
    add("payload-object", _with(payload=good_payload()), "bad_field", 'The "payload" field must be text.')
    add("signature-number", _with(signature=12345), "bad_field", 'The "signature" field must be text.')
    add("key-id-null", _with(key_id=None), "bad_field", 'The "key_id" field must be text.')

    # Keys and signatures.
    add("unknown-key-id", _with(key_id="acme-2030"), "unknown_key", 'The licence was signed by an unknown key ("acme-2030").')
    add(
        "re-signed-own-key-id",
        fmt.sign_document(good_payload(max_nodes=500), private_key=OTHER_KEY, key_id="someone-else"),
        "unknown_key",
        'The licence was signed by an unknown key ("someone-else").',
    )
    add(
        "re-signed-vendor-key-id",
        fmt.sign_document(good_payload(max_nodes=500), private_key=OTHER_KEY),
        "tampered",
        TAMPERED,
    )
    add(
        "production-key-id-test-signature",
        fmt.sign_document(good_payload(), key_id=fmt.VENDOR_KEY_ID),
        "tampered",
        TAMPERED,
    )
    add("signature-bad-base64", _with(signature="!!not-base64!!"), "bad_encoding", 'The "signature" field is not valid base64url.')
    add("signature-padded", _with(signature=document["signature"] + "=="), "bad_encoding", 'The "signature" field is not valid base64url.')
    add("payload-bad-base64", _with(payload="eyJ$%"), "bad_encoding", 'The "payload" field is not valid base64url.')
    add(
        "payload-standard-base64",
        _with(payload=base64.b64encode(b"\xfb\xff" * 30).decode()),
        "bad_encoding",
        'The "payload" field is not valid base64url.',
    )
    add("payload-impossible-length", _with(payload="eyJhbGciA"), "bad_encoding", 'The "payload" field is not valid base64url.')
    short = "The licence signature is malformed (an Ed25519 signature is 64 bytes)."
    add("signature-too-short", _with(signature=_b64(b"\x01" * 32)), "bad_signature", short)
    add("signature-empty", _with(signature=""), "bad_signature", short)
    payload_length = len(base64.urlsafe_b64decode(document["payload"] + "=" * (-len(document["payload"]) % 4)))
    for index in (0, payload_length // 2, payload_length - 1):
        add(f"payload-bit-flip-{index}", _with(payload=_flip(document["payload"], index)), "tampered", TAMPERED)
    for index in (0, 31, 32, 63):
        add(f"signature-bit-flip-{index}", _with(signature=_flip(document["signature"], index)), "tampered", TAMPERED)
    add("signature-swapped", _with(signature=_envelope(fmt.sign_document(good_payload(max_nodes=6)))["signature"]), "tampered", TAMPERED)

    # The signed payload.
    add("payload-array", fmt.sign_document(b"[]"), "bad_payload", BAD_PAYLOAD)
    add("payload-not-utf8", fmt.sign_document(b'{"customer": "\xff"}'), "bad_payload", BAD_PAYLOAD)
    add("payload-not-json", fmt.sign_document(b"licence"), "bad_payload", BAD_PAYLOAD)
    for name in fmt.PAYLOAD_FIELDS:
        add(f"payload-missing-{name}", _signed_payload_without(name), "missing_field", f'The licence payload has no "{name}" field.')
    add("payload-extra-field", _bad_field("seats", 500), "extra_field", 'The licence payload has an unexpected field "seats".')
    add("payload-extra-field-2", _bad_field("support_level", "gold"), "extra_field", 'The licence payload has an unexpected field "support_level".')
    add("wrong-product", _bad_field("product", "pamportal-cloud"), "wrong_product", 'This licence is for another product ("pamportal-cloud"), not for pamportal.')
    add("product-number", _bad_field("product", 1), "bad_field", 'The "product" field must be text.')
    for label, value in (("text", "3"), ("negative", -1), ("zero", 0), ("true", True), ("float", 3.0), ("null", None), ("too-many", 10**6)):
        add(f"max-nodes-{label}", _bad_field("max_nodes", value), "bad_field", MAX_NODES)
    add("features-text", _bad_field("features", "audit-export,sso"), "bad_field", FEATURES)
    add("features-number", _bad_field("features", [1]), "bad_field", FEATURES)
    add("features-duplicate", _bad_field("features", ["sso", "sso"]), "bad_field", FEATURES)
    add("features-bad-name", _bad_field("features", ["Single Sign-On"]), "bad_field", FEATURES)
    add("features-too-many", _bad_field("features", [f"f{i}" for i in range(65)]), "bad_field", FEATURES)
    add("customer-empty", _bad_field("customer", ""), "bad_field", _text_rule("customer", 200))
    add("customer-control", _bad_field("customer", "ACME\u0007"), "bad_field", _text_rule("customer", 200))
    add("customer-too-long", _bad_field("customer", "A" * 201), "bad_field", _text_rule("customer", 200))
    add("customer-surrogate", _bad_field("customer", "\ud800"), "lone_surrogate",
        'The file holds text that is not valid Unicode in the value of the field "customer"')
    add("customer-object", _bad_field("customer", {"name": "ACME"}), "bad_field", _text_rule("customer", 200))
    add("edition-number", _bad_field("edition", 5), "bad_field", _text_rule("edition", 64))
    add("licence-id-empty", _bad_field("licence_id", ""), "bad_field", 'The "licence_id" field must be 1 to 64 letters')
    add("licence-id-html", _bad_field("licence_id", "<script>"), "bad_field", 'The "licence_id" field must be 1 to 64 letters')
    add("not-before-words", _bad_field("not_before", "yesterday"), "bad_field", f'The "not_before" field {TIME}')
    add("not-after-month-13", _bad_field("not_after", "2027-13-01T00:00:00Z"), "bad_field", f'The "not_after" field {TIME}')
    add("not-after-offset", _bad_field("not_after", "2027-01-01T00:00:00+00:00"), "bad_field", f'The "not_after" field {TIME}')
    add("not-after-fraction", _bad_field("not_after", "2027-01-01T00:00:00.5Z"), "bad_field", f'The "not_after" field {TIME}')
    add("not-after-number", _bad_field("not_after", 1790000000), "bad_field", f'The "not_after" field {TIME}')
    add(
        "ends-before-it-starts",
        _bad_field("not_after", fmt.format_time(NOT_BEFORE - timedelta(days=1))),
        "bad_field",
        'The "not_after" field must be later than not_before.',
    )

    # The validity window.
    expired_at = (NOW - timedelta(days=1)).replace(hour=0, minute=0, second=0)
    add(
        "expired-yesterday",
        fmt.sign_document(good_payload(not_before=fmt.format_time(expired_at - timedelta(days=365)), not_after=fmt.format_time(expired_at))),
        "expired",
        f"This licence expired on {_when(expired_at)}.",
    )
    long_ago = datetime(2020, 1, 31, tzinfo=timezone.utc)
    add(
        "expired-long-ago",
        fmt.sign_document(good_payload(not_before="2019-01-31T00:00:00Z", not_after=fmt.format_time(long_ago))),
        "expired",
        "This licence expired on 2020-01-31.",
    )
    starts = NOW + timedelta(days=3)
    add(
        "not-yet-valid",
        fmt.sign_document(good_payload(not_before=fmt.format_time(starts), not_after=fmt.format_time(starts + timedelta(days=365)))),
        "not_yet_valid",
        f"This licence is not valid until {_when(starts)}.",
    )
    return cases


CORPUS = build()
assert len({case.name for case in CORPUS}) == len(CORPUS), "corpus case names must be unique"
