"""A corpus of broken joining bundles, each with the refusal it must get (code, exact
message, field).

Every case starts from one good bundle and breaks one thing. The good bundle is
byte-for-byte deterministic (fixed MEK, salt, nonce, times and an Ed25519 CA whose
signatures are deterministic), so even the JSON error positions of a truncated file
are stable. Body faults are re-encrypted with the right MEK, so they get past the tag
and reach the body's field checks.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from pamportal.crypto import bundle as fmt
from pamportal.crypto import licence

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
CREATED = NOW - timedelta(hours=1)
EXPIRES = CREATED + timedelta(hours=24)
MEK = bytes(range(32))
OTHER_MEK = bytes(range(100, 132))
SALT = bytes(range(200, 232))
NONCE = bytes(range(12))
CLUSTER_ID = "cluster-7f3a"
BUNDLE_ID = "bundle-0001"
LEADER = "leader.example.com"
FOLLOWER = "10.0.0.7"
TOKEN = fmt.b64url_encode(bytes(range(50, 82)))
LEADER_VERSION = "3.1.4"

_CA_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
_CA_END = datetime(2036, 1, 1, tzinfo=timezone.utc)


def _key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificate(
    *,
    subject: str = "pamportal test cluster CA",
    issuer: str | None = None,
    key_seed: int = 1,
    issuer_seed: int | None = None,
    ca: bool | None = True,
    not_before: datetime = _CA_START,
    not_after: datetime = _CA_END,
    serial: int = 1001,
) -> str:
    """A throwaway certificate (Ed25519, so the PEM is deterministic). ``ca=None``
    leaves out the basic constraints altogether."""
    key = _key(key_seed)
    signer = _key(issuer_seed if issuer_seed is not None else key_seed)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer or subject))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    return builder.sign(signer, None).public_bytes(serialization.Encoding.PEM).decode("ascii")


CA_PEM = make_certificate()


def good_body(**changes) -> dict:
    body = {
        "leader_address": LEADER,
        "leader_ports": dict(fmt.DEFAULT_PORTS),
        "ca_cert_pem": CA_PEM,
        "join_token": TOKEN,
        "follower_address": FOLLOWER,
        "leader_version": LEADER_VERSION,
    }
    body.update(changes)
    return body


def good_header(*, mek: bytes = MEK, created: datetime = CREATED, expires: datetime = EXPIRES, **changes) -> dict:
    header = fmt.bundle_header(
        mek=mek, cluster_id=CLUSTER_ID, bundle_id=BUNDLE_ID, created=created, expires=expires, salt=SALT
    )
    header.update(changes)
    return header


def sealed(*, header: dict | None = None, body: dict | bytes | None = None, mek: bytes = MEK, **kwargs) -> bytes:
    """A bundle with a valid tag under ``mek`` around whatever header and body."""
    return fmt.encrypt_document(
        mek=mek, header=header if header is not None else good_header(mek=mek),
        body=body if body is not None else good_body(), nonce=NONCE, **kwargs,
    )


def good_bundle() -> bytes:
    return sealed()


GOOD = good_bundle()


def document(data: bytes = GOOD) -> dict:
    return json.loads(data)


def dump(doc) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def edited(edit) -> bytes:
    """The good bundle's JSON, changed by ``edit(doc)`` (no re-encryption)."""
    doc = document()
    edit(doc)
    return dump(doc)


def _set(path: str, value):
    def edit(doc):
        *parents, last = path.split(".")
        target = doc
        for name in parents:
            target = target[name]
        target[last] = value
    return edit


def _delete(path: str):
    def edit(doc):
        *parents, last = path.split(".")
        target = doc
        for name in parents:
            target = target[name]
        del target[last]
    return edit


def with_field(path: str, value) -> bytes:
    return edited(_set(path, value))


def without_field(path: str) -> bytes:
    return edited(_delete(path))


def flip_b64(value: str, index: int, bit: int = 0x01) -> str:
    raw = bytearray(fmt._b64url(value, "test"))
    raw[index] ^= bit
    return fmt.b64url_encode(bytes(raw))


def flipped(path: str, index: int) -> bytes:
    doc = document()
    target = doc
    *parents, last = path.split(".")
    for name in parents:
        target = target[name]
    target[last] = flip_b64(target[last], index)
    return dump(doc)


def body_without(name: str) -> bytes:
    body = good_body()
    del body[name]
    return sealed(body=body)


def ports_with(**changes) -> dict:
    ports = dict(fmt.DEFAULT_PORTS)
    ports.update(changes)
    return ports


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    code: str
    message: str  # the exact operator-facing message
    field: str | None = None
    mek: bytes = MEK
    now: datetime = NOW
    own_address: str | None = None


def _missing(path: str) -> tuple[str, str]:
    return "missing_field", f'The bundle has no "{path}" field.'


def _extra(path: str) -> tuple[str, str]:
    return "extra_field", f'The bundle has an unexpected field "{path}".'


def _bad(path: str, rule: str) -> tuple[str, str]:
    return "bad_field", f'The "{path}" field {rule}.'


def _encoding(path: str) -> tuple[str, str]:
    return "bad_encoding", f'The "{path}" field is not valid base64url.'


def _ca(rule: str) -> tuple[str, str]:
    return "bad_ca", f"The cluster CA certificate in the bundle {rule}."


TOO_LARGE = ("too_large", "The file is too large to be a joining bundle (the limit is 64 KiB).")
EMPTY = ("empty", "The file is empty.")
NOT_UTF8 = ("not_utf8", "The file is not UTF-8 text; a joining bundle is a UTF-8 JSON document.")
BOM = (
    "bom",
    "The file starts with a byte-order mark; a joining bundle is plain UTF-8 JSON without one. "
    "Upload the file exactly as the leader produced it.",
)
TOO_DEEP = ("too_deep", "The file nests JSON more than 5 levels deep; a joining bundle nests at most 3.")
NOT_A_BUNDLE = ("not_a_bundle", "This file is not a pamportal joining bundle.")
LICENCE = (
    "not_a_bundle",
    "This is a pamportal licence file, not a joining bundle. "
    "On the leader, generate a joining bundle for this node and upload that.",
)
WRONG_MEK = (
    "wrong_mek",
    "The Master Encryption Key does not open this bundle (wrong MEK). "
    "Type the MEK of the cluster whose leader made the bundle.",
)
TAMPERED = ("tampered", "The bundle was changed after it was made (tampered). Generate a new one on the leader.")
BAD_BODY = ("bad_body", "The bundle opened with this MEK, but what it holds is not a joining bundle's contents.")


def _not_json(line: int, column: int, why: str) -> tuple[str, str]:
    return "not_json", f"The file is not valid JSON (line {line}, column {column}: {why})."


def _version(shown: str) -> tuple[str, str]:
    return "unsupported_version", f"This joining bundle has format version {shown}; this console reads version 1."


def _duplicate(name: str) -> tuple[str, str]:
    return "duplicate_key", f'The file names the field "{name}" more than once.'


def _truncated(marker: str, extra: int = 0) -> bytes:
    """The good file cut just after the first occurrence of ``marker`` (+ extra bytes)."""
    index = GOOD.index(marker.encode()) + len(marker) + extra
    return GOOD[:index]


def _random_binary(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(size))


def _licence_file() -> bytes:
    return licence.mint(
        customer="Corpus Corp", edition="enterprise", max_nodes=3,
        not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=365), licence_id="LIC-1",
    )


def _duplicate_top_nonce() -> bytes:
    text = GOOD.decode()
    return text.replace('"nonce":', '"nonce": "AAAAAAAAAAAAAAAA",\n  "nonce":', 1).encode()


def _duplicate_in_header() -> bytes:
    text = GOOD.decode()
    return text.replace('"bundle_id":', '"bundle_id": "bundle-9999",\n    "bundle_id":', 1).encode()


def _nested(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


def _nested_in_header() -> bytes:
    return with_field("header.cluster_id", [[[[[["x"]]]]]])


def _huge_valid_json() -> bytes:
    return with_field("padding", "A" * (fmt.MAX_BYTES + 10))


def _ca_and_key() -> str:
    key_pem = _key(9).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return CA_PEM + key_pem


def _mek_check_from(mek: bytes) -> str:
    return good_header(mek=mek)["mek_check"]


def build_corpus() -> list[Case]:
    cases: list[Case] = []

    def add(name: str, data: bytes, refusal: tuple[str, str], field: str | None = None, **kwargs) -> None:
        code, message = refusal
        cases.append(Case(name, data, code, message, field, **kwargs))

    # --- The file as bytes -------------------------------------------------------------
    add("empty", b"", EMPTY)
    add("only whitespace", b" \n\t\r\n ", EMPTY)
    add("huge file of spaces", b" " * (fmt.MAX_BYTES + 1), TOO_LARGE)
    add("huge but valid JSON", _huge_valid_json(), TOO_LARGE)
    add("binary noise", _random_binary(2048, seed=1), NOT_UTF8)
    add("binary without NUL", bytes(b | 0x80 for b in _random_binary(512, seed=2)), NOT_UTF8)
    add("latin-1 byte in a string", GOOD.replace(BUNDLE_ID.encode(), b"bundle-\xe9"), NOT_UTF8)
    add("UTF-16 with BOM", GOOD.decode().encode("utf-16"), NOT_UTF8)
    add("UTF-16-LE without BOM", GOOD.decode().encode("utf-16-le"), NOT_UTF8)
    add("UTF-32", GOOD.decode().encode("utf-32"), NOT_UTF8)
    add("UTF-8 BOM", b"\xef\xbb\xbf" + GOOD, BOM)
    add("gzip-compressed", b"\x1f\x8b\x08\x00" + _random_binary(64, seed=3), NOT_UTF8)

    # --- JSON --------------------------------------------------------------------------
    add("deeply nested arrays", _nested(10_000), TOO_DEEP)
    add("deeply nested objects", b'{"a":' * 50 + b"1" + b"}" * 50, TOO_DEEP)
    add("nested value in header", _nested_in_header(), TOO_DEEP)
    add("plain text", b"hello, leader", _not_json(1, 1, "Expecting value"))
    add("PEM instead of a bundle", CA_PEM.encode(), _not_json(1, 1, "Expecting value"))
    add("trailing garbage", GOOD + b"}", _not_json(18, 1, "Extra data"))
    add("NaN in the file", GOOD.replace(b'"version": 1', b'"version": NaN'), ("not_json", "The file is not valid JSON."))
    add("JSON array", b"[]", NOT_A_BUNDLE)
    add("JSON array of the bundle", b"[" + GOOD + b"]", NOT_A_BUNDLE)
    add("JSON null", b"null", NOT_A_BUNDLE)
    add("JSON number", b"42", NOT_A_BUNDLE)
    add("JSON string", b'"pamportal-joining-bundle"', NOT_A_BUNDLE)
    add("empty object", b"{}", NOT_A_BUNDLE)
    add("format missing", without_field("format"), NOT_A_BUNDLE)
    add("format of another kind", with_field("format", "pamportal-joining-bundle-v2"), NOT_A_BUNDLE)
    add("format in another case", with_field("format", "PAMPORTAL-JOINING-BUNDLE"), NOT_A_BUNDLE)
    add("a licence file", _licence_file(), LICENCE)
    add("duplicate top-level key", _duplicate_top_nonce(), _duplicate("nonce"), "nonce")
    add("duplicate header key", _duplicate_in_header(), _duplicate("bundle_id"), "bundle_id")

    # --- Truncated at many offsets -------------------------------------------------------
    add("cut after the first brace", GOOD[:1], _not_json(1, 2, "Expecting property name enclosed in double quotes"))
    add("cut inside format", _truncated('"format": "pamportal'), _not_json(2, 13, "Unterminated string starting at"))
    add("cut after version", _truncated('"version": 1'), _not_json(3, 15, "Expecting ',' delimiter"))
    add("cut inside the header", _truncated('"cluster_id": "'), _not_json(5, 19, "Unterminated string starting at"))
    add("cut inside kdf", _truncated('"name": "HKDF'), _not_json(10, 15, "Unterminated string starting at"))
    add("cut inside mek_check", _truncated('"mek_check": "', 5), _not_json(13, 18, "Unterminated string starting at"))
    add("cut inside the nonce", _truncated('"nonce": "', 3), _not_json(15, 12, "Unterminated string starting at"))
    add("cut inside the ciphertext", _truncated('"ciphertext": "', 40), _not_json(16, 17, "Unterminated string starting at"))
    add("cut before the last brace", GOOD.rstrip()[:-1], _not_json(17, 1, "Expecting ',' delimiter"))
    add("cut half way", GOOD[: len(GOOD) // 2], _not_json(16, 17, "Unterminated string starting at"))
    ciphertext = document()["ciphertext"]
    raw_ciphertext = fmt._b64url(ciphertext, "ciphertext")
    add("ciphertext cut by 3 bytes", with_field("ciphertext", fmt.b64url_encode(raw_ciphertext[:-3])), TAMPERED)
    add("ciphertext without its tag", with_field("ciphertext", fmt.b64url_encode(raw_ciphertext[:-16])), TAMPERED)
    add("ciphertext cut by 4 characters", with_field("ciphertext", ciphertext[:-4]), _encoding("ciphertext"), "ciphertext")
    add("ciphertext cut to 12 bytes", with_field("ciphertext", ciphertext[:16]),
        _bad("ciphertext", "is too short to hold a bundle (the file is cut short)"), "ciphertext")
    add("ciphertext empty", with_field("ciphertext", ""),
        _bad("ciphertext", "is too short to hold a bundle (the file is cut short)"), "ciphertext")
    add("ciphertext cut to an impossible length", with_field("ciphertext", ciphertext[:-3]), _encoding("ciphertext"), "ciphertext")

    # --- Version -----------------------------------------------------------------------
    add("version 2", with_field("version", 2), _version("2"), "version")
    add("version 0", with_field("version", 0), _version("0"), "version")
    add("version as text", with_field("version", "1"), _version('"1"'), "version")
    add("version as float", with_field("version", 1.0), _version("1.0"), "version")
    add("version true", with_field("version", True), _version("true"), "version")
    add("version null", with_field("version", None), _version("null"), "version")

    # --- Exact fields: file, header, kdf -------------------------------------------------
    for name in ("version", "header", "nonce", "ciphertext"):
        add(f"file without {name}", without_field(name), _missing(name), name)
    add("file with an extra field", with_field("comment", "hi"), _extra("comment"), "comment")
    add("file with a tag field", with_field("tag", "AAAA"), _extra("tag"), "tag")
    for name in fmt.HEADER_FIELDS:
        add(f"header without {name}", without_field(f"header.{name}"), _missing(f"header.{name}"), f"header.{name}")
    add("header with an extra field", with_field("header.leader_address", LEADER), _extra("header.leader_address"),
        "header.leader_address")
    add("kdf without name", without_field("header.kdf.name"), _missing("header.kdf.name"), "header.kdf.name")
    add("kdf without salt", without_field("header.kdf.salt"), _missing("header.kdf.salt"), "header.kdf.salt")
    add("kdf with iterations", with_field("header.kdf.iterations", 100000), _extra("header.kdf.iterations"),
        "header.kdf.iterations")

    # --- Types and values in the header ----------------------------------------------------
    add("header is a list", with_field("header", []), _bad("header", "must be a JSON object"), "header")
    add("header is text", with_field("header", "header"), _bad("header", "must be a JSON object"), "header")
    add("kdf is text", with_field("header.kdf", "HKDF-SHA256"), _bad("header.kdf", "must be a JSON object"), "header.kdf")
    ident = "must be 1 to 64 letters, digits, dots, colons, dashes or underscores"
    add("cluster id is a number", with_field("header.cluster_id", 7), _bad("header.cluster_id", ident), "header.cluster_id")
    add("cluster id is empty", with_field("header.cluster_id", ""), _bad("header.cluster_id", ident), "header.cluster_id")
    add("bundle id with a space", with_field("header.bundle_id", "bundle 1"), _bad("header.bundle_id", ident), "header.bundle_id")
    add("bundle id too long", with_field("header.bundle_id", "b" * 65), _bad("header.bundle_id", ident), "header.bundle_id")
    when = "must be a UTC time written like 2026-01-31T00:00:00Z"
    add("created in words", with_field("header.created", "yesterday"), _bad("header.created", when), "header.created")
    add("created is a number", with_field("header.created", 1767225600), _bad("header.created", when), "header.created")
    add("created with an offset", with_field("header.created", "2026-03-01T11:00:00+00:00"), _bad("header.created", when),
        "header.created")
    add("expires on 30 February", with_field("header.expires", "2026-02-30T00:00:00Z"), _bad("header.expires", when),
        "header.expires")
    add("expires a date only", with_field("header.expires", "2026-03-02"), _bad("header.expires", when), "header.expires")
    add("expires before created", with_field("header.expires", "2026-03-01T10:00:00Z"),
        _bad("header.expires", "must be later than header.created"), "header.expires")
    add("kdf name PBKDF2", with_field("header.kdf.name", "PBKDF2"), _bad("header.kdf.name", 'must be "HKDF-SHA256"'),
        "header.kdf.name")
    add("kdf name is a number", with_field("header.kdf.name", 256), _bad("header.kdf.name", "must be text"), "header.kdf.name")
    add("salt not base64", with_field("header.kdf.salt", "not base64!"), _encoding("header.kdf.salt"), "header.kdf.salt")
    add("salt padded", with_field("header.kdf.salt", fmt.b64url_encode(bytes(16)) + "=="), _encoding("header.kdf.salt"),
        "header.kdf.salt")
    add("salt standard base64", with_field("header.kdf.salt", "+/+/+/+/+/+/+/+/+/+/+w"), _encoding("header.kdf.salt"),
        "header.kdf.salt")
    add("salt with stray bits", with_field("header.kdf.salt", fmt.b64url_encode(bytes(16))[:-1] + "B"),
        _encoding("header.kdf.salt"), "header.kdf.salt")
    add("salt too short", with_field("header.kdf.salt", fmt.b64url_encode(bytes(8))),
        _bad("header.kdf.salt", "must be 16 to 32 bytes (it is 8)"), "header.kdf.salt")
    add("salt empty", with_field("header.kdf.salt", ""), _bad("header.kdf.salt", "must be 16 to 32 bytes (it is 0)"),
        "header.kdf.salt")
    add("salt too long", with_field("header.kdf.salt", fmt.b64url_encode(bytes(64))),
        _bad("header.kdf.salt", "must be 16 to 32 bytes (it is 64)"), "header.kdf.salt")
    add("salt is a number", with_field("header.kdf.salt", 12345), _bad("header.kdf.salt", "must be text (base64url)"),
        "header.kdf.salt")
    add("mek_check too short", with_field("header.mek_check", fmt.b64url_encode(bytes(16))),
        _bad("header.mek_check", "must be 32 bytes (it is 16)"), "header.mek_check")
    add("mek_check not base64", with_field("header.mek_check", "?" * 43), _encoding("header.mek_check"), "header.mek_check")

    # --- Nonce and ciphertext encodings --------------------------------------------------------
    add("nonce not base64", with_field("nonce", "nonce nonce!"), _encoding("nonce"), "nonce")
    add("nonce 16 bytes", with_field("nonce", fmt.b64url_encode(bytes(16))), _bad("nonce", "must be 12 bytes (it is 16)"), "nonce")
    add("nonce 8 bytes", with_field("nonce", fmt.b64url_encode(bytes(8))), _bad("nonce", "must be 12 bytes (it is 8)"), "nonce")
    add("nonce empty", with_field("nonce", ""), _bad("nonce", "must be 12 bytes (it is 0)"), "nonce")
    add("nonce is a list", with_field("nonce", [1, 2, 3]), _bad("nonce", "must be text (base64url)"), "nonce")
    add("ciphertext is null", with_field("ciphertext", None), _bad("ciphertext", "must be text (base64url)"), "ciphertext")
    add("ciphertext standard base64", with_field("ciphertext", ciphertext.replace("-", "+").replace("_", "/") + "+/"),
        _encoding("ciphertext"), "ciphertext")
    add("ciphertext with a newline", with_field("ciphertext", ciphertext[:40] + "\n" + ciphertext[40:]),
        _encoding("ciphertext"), "ciphertext")

    # --- Tampering: caught by the tag with the right MEK --------------------------------------
    add("bundle id changed", with_field("header.bundle_id", "bundle-0002"), TAMPERED)
    add("cluster id changed", with_field("header.cluster_id", "cluster-0000"), TAMPERED)
    add("expiry extended", with_field("header.expires", "2027-03-01T11:00:00Z"), TAMPERED)
    add("created moved back", with_field("header.created", "2026-03-01T10:00:00Z"), TAMPERED)
    add("salt bit flipped", flipped("header.kdf.salt", 0), TAMPERED)
    add("salt replaced", with_field("header.kdf.salt", fmt.b64url_encode(bytes(32))), TAMPERED)
    add("salt shortened to 16 bytes", with_field("header.kdf.salt", fmt.b64url_encode(SALT[:16])), TAMPERED)
    add("nonce bit flipped", flipped("nonce", 5), TAMPERED)
    add("nonce replaced", with_field("nonce", fmt.b64url_encode(bytes(12))), TAMPERED)
    add("ciphertext first byte flipped", flipped("ciphertext", 0), TAMPERED)
    add("ciphertext middle byte flipped", flipped("ciphertext", 500), TAMPERED)
    add("tag first byte flipped", flipped("ciphertext", -16), TAMPERED)
    add("tag last byte flipped", flipped("ciphertext", -1), TAMPERED)
    add("ciphertext with a byte added", with_field("ciphertext", fmt.b64url_encode(fmt._b64url(ciphertext, "x") + b"\x00")),
        TAMPERED)
    add("body from another bundle, same MEK",
        with_field("ciphertext", document(sealed(header=good_header(bundle_id="bundle-0002")))["ciphertext"]), TAMPERED)
    add("made with another MEK, right MEK's check copied in",
        sealed(mek=OTHER_MEK, header=good_header(mek=OTHER_MEK, mek_check=_mek_check_from(MEK))), TAMPERED)

    # --- Wrong MEK -------------------------------------------------------------------------
    add("opened with another MEK", GOOD, WRONG_MEK, mek=OTHER_MEK)
    add("re-encrypted with another MEK", sealed(mek=OTHER_MEK), WRONG_MEK)
    add("mek_check bit flipped", flipped("header.mek_check", 3), WRONG_MEK)
    add("opened with an all-zero MEK", GOOD, WRONG_MEK, mek=bytes(32))

    # --- The body (re-encrypted with the right MEK) -----------------------------------------------
    for name in fmt.BODY_FIELDS:
        add(f"body without {name}", body_without(name), _missing(f"body.{name}"), f"body.{name}")
    add("body with the CA key", sealed(body=good_body(ca_key_pem="secret")), _extra("body.ca_key_pem"), "body.ca_key_pem")
    add("body with a bundle id", sealed(body=good_body(bundle_id=BUNDLE_ID)), _extra("body.bundle_id"), "body.bundle_id")
    add("body is not JSON", sealed(body=b"leader=10.0.0.1"), BAD_BODY, "body")
    add("body is a JSON list", sealed(body=b"[1, 2, 3]"), BAD_BODY, "body")
    add("body is an empty object", sealed(body=b"{}"), _missing("body.leader_address"), "body.leader_address")
    add("body is not UTF-8", sealed(body=b'{"leader_address": "\xff"}'), BAD_BODY, "body")
    add("body with a duplicate key", sealed(body=b'{"join_token": "a", "join_token": "b"}'), BAD_BODY, "body")
    add("body with NaN", sealed(body=b'{"leader_ports": NaN}'), BAD_BODY, "body")
    add("body only spaces", sealed(body=b"  "), BAD_BODY, "body")
    add("body empty", sealed(body=b""),
        _bad("ciphertext", "is too short to hold a bundle (the file is cut short)"), "ciphertext")
    ports = "body.leader_ports"
    add("ports without https", sealed(body=good_body(leader_ports={k: v for k, v in fmt.DEFAULT_PORTS.items() if k != "https"})),
        _missing(f"{ports}.https"), f"{ports}.https")
    add("ports with postgres", sealed(body=good_body(leader_ports=ports_with(postgres=5432))), _extra(f"{ports}.postgres"),
        f"{ports}.postgres")
    add("ports as a list", sealed(body=good_body(leader_ports=[2390, 2379, 2380, 443, 2391])),
        _bad(ports, "must be a JSON object"), ports)
    port_rule = "must be a port number from 1 to 65535"
    add("port 0", sealed(body=good_body(leader_ports=ports_with(setup_api=0))), _bad(f"{ports}.setup_api", port_rule),
        f"{ports}.setup_api")
    add("port 70000", sealed(body=good_body(leader_ports=ports_with(etcd_peer=70000))), _bad(f"{ports}.etcd_peer", port_rule),
        f"{ports}.etcd_peer")
    add("port as text", sealed(body=good_body(leader_ports=ports_with(https="443"))), _bad(f"{ports}.https", port_rule),
        f"{ports}.https")
    add("port true", sealed(body=good_body(leader_ports=ports_with(delegation=True))), _bad(f"{ports}.delegation", port_rule),
        f"{ports}.delegation")
    add("port as float", sealed(body=good_body(leader_ports=ports_with(etcd_client=2379.0))),
        _bad(f"{ports}.etcd_client", port_rule), f"{ports}.etcd_client")
    add("two services on one port", sealed(body=good_body(leader_ports=ports_with(delegation=2390))),
        _bad(ports, "must give a different port to each service"), ports)
    add("leader address not a name", sealed(body=good_body(leader_address="not an address")),
        _bad("body.leader_address", "must be an FQDN or an IP address: “not an address” has spaces in it"), "body.leader_address")
    add("leader address not qualified", sealed(body=good_body(leader_address="leader")),
        _bad("body.leader_address", "must be an FQDN or an IP address: “leader” is not fully qualified "
             "(it needs a domain, like node1.example.com)"), "body.leader_address")
    add("leader address is a number", sealed(body=good_body(leader_address=167772161)),
        _bad("body.leader_address", "must be text (an FQDN or an IP address)"), "body.leader_address")
    add("leader address with a port", sealed(body=good_body(leader_address="10.0.0.1:2390")),
        _bad("body.leader_address", "must be an FQDN or an IP address: “10.0.0.1:2390” is not an IP address "
             "(and a host name cannot contain “:” or “/”)"), "body.leader_address")
    add("follower address wildcard", sealed(body=good_body(follower_address="0.0.0.0")),
        _bad("body.follower_address", "must be an FQDN or an IP address: “0.0.0.0” is the wildcard address; "
             "give the address other nodes use to reach this node"),
        "body.follower_address")
    add("follower address bad IPv4", sealed(body=good_body(follower_address="10.0.0.300")),
        _bad("body.follower_address", "must be an FQDN or an IP address: “10.0.0.300” looks like an IPv4 address but "
             "is not one (and a name that ends in a number is not a host name)"),
        "body.follower_address")
    add("follower address in brackets", sealed(body=good_body(follower_address="[::1]")),
        _bad("body.follower_address", "must be an FQDN or an IP address: “[::1]” is written in brackets; "
             "write the IP address without them (::1)"), "body.follower_address")
    add("follower address with a trailing dot", sealed(body=good_body(follower_address="node2.example.com.")),
        _bad("body.follower_address", "must be an FQDN or an IP address: “node2.example.com.” ends with a dot; "
             "write the name without it"), "body.follower_address")
    add("follower address in capitals", sealed(body=good_body(follower_address="Node2.Example.COM")),
        _bad("body.follower_address", "must be written as node2.example.com"), "body.follower_address")
    add("follower address empty", sealed(body=good_body(follower_address="")),
        _bad("body.follower_address", "must be an FQDN or an IP address: “” is empty"), "body.follower_address")
    token_path = "body.join_token"
    add("join token too short", sealed(body=good_body(join_token=fmt.b64url_encode(bytes(16)))),
        _bad(token_path, "must be 32 bytes (it is 16)"), token_path)
    add("join token not base64", sealed(body=good_body(join_token="token: letmein")), _encoding(token_path), token_path)
    add("join token is a number", sealed(body=good_body(join_token=42)), _bad(token_path, "must be text (base64url)"), token_path)
    version_rule = "must be a version written major.feature.patch, like 3.1.4"
    add("leader version two parts", sealed(body=good_body(leader_version="3.1")), _bad("body.leader_version", version_rule),
        "body.leader_version")
    add("leader version with a suffix", sealed(body=good_body(leader_version="3.1.4-rc1")),
        _bad("body.leader_version", version_rule), "body.leader_version")
    add("leader version is a number", sealed(body=good_body(leader_version=3.1)), _bad("body.leader_version", version_rule),
        "body.leader_version")

    # --- The CA certificate in the body -------------------------------------------------------
    def ca_case(name: str, pem, refusal):
        add(name, sealed(body=good_body(ca_cert_pem=pem)), refusal, "body.ca_cert_pem")

    ca_case("CA is a leaf certificate", make_certificate(subject="leader.example.com", key_seed=2, issuer="pamportal test cluster CA",
                                                         issuer_seed=1, ca=False),
            _ca("is not a CA certificate (its basic constraints do not say CA)"))
    ca_case("CA without basic constraints", make_certificate(ca=None), _ca("is not a CA certificate (its basic constraints do not say CA)"))
    ca_case("CA not self-signed", make_certificate(subject="intermediate", key_seed=3, issuer="another root", issuer_seed=4),
            _ca("is not self-signed, so it is not a cluster CA"))
    ca_case("CA signature broken", make_certificate(key_seed=5, issuer_seed=6),
            _ca("is not self-signed, so it is not a cluster CA"))
    ca_case("CA expired", make_certificate(not_before=datetime(2025, 1, 1, tzinfo=timezone.utc),
                                           not_after=datetime(2026, 2, 1, tzinfo=timezone.utc)),
            _ca("expired at 2026-02-01 00:00:00 UTC"))
    ca_case("CA not yet valid", make_certificate(not_before=datetime(2026, 6, 1, tzinfo=timezone.utc)),
            _ca("is not valid until 2026-06-01 00:00:00 UTC"))
    ca_case("CA is text", "the cluster CA", _ca("is not a PEM certificate"))
    ca_case("CA PEM with garbage inside", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            _ca("is not a PEM certificate"))
    ca_case("CA PEM with a broken line", CA_PEM.replace("\n", "\n!", 2), _ca("is not a PEM certificate"))
    ca_case("CA PEM with non-ASCII", CA_PEM.replace("M", "Ä", 1), _ca("is not a PEM certificate"))
    ca_case("two certificates", CA_PEM + make_certificate(serial=2002), _ca("must be exactly one certificate"))
    ca_case("CA with its private key", _ca_and_key(),
            _ca("comes with a private key, which must never leave the leader; the bundle is refused"))
    ca_case("CA is empty", "", _ca("is empty"))
    ca_case("CA is a number", 7, _ca("must be PEM text"))
    ca_case("CA too long", CA_PEM + "\n" * (17 * 1024), _ca("is too long (more than 16 KiB)"))

    # --- Valid bundles refused for when or where they are used ----------------------------------------
    add("expired", sealed(header=good_header(created=NOW - timedelta(days=2), expires=NOW - timedelta(days=1))),
        ("expired", "This bundle expired at 2026-02-28 12:00:00 UTC; generate a new one on the leader."), "header.expires")
    add("expires exactly now", sealed(header=good_header(created=NOW - timedelta(days=1), expires=NOW)),
        ("expired", "This bundle expired at 2026-03-01 12:00:00 UTC; generate a new one on the leader."), "header.expires")
    add("made in the future", sealed(header=good_header(created=NOW + timedelta(minutes=10), expires=NOW + timedelta(days=1))),
        ("not_yet_valid", "This bundle was made at 2026-03-01 12:10:00 UTC, later than this node's clock "
                          "(2026-03-01 12:00:00 UTC); check that both nodes keep time with NTP."), "header.created")
    add("for another address", GOOD, ("wrong_address", "This bundle is for 10.0.0.7, not for this node (10.0.0.8)."),
        "body.follower_address", own_address="10.0.0.8")
    add("for an IP, used by a name", GOOD,
        ("wrong_address", "This bundle is for 10.0.0.7, not for this node (node2.example.com)."),
        "body.follower_address", own_address="node2.example.com")
    return cases


CORPUS = build_corpus()
