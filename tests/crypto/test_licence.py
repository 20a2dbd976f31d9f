"""The licence format on its own: a good licence reads back exactly, the keys are what
they claim to be, and every broken file in the corpus gets its own refusal."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pamportal.crypto import licence as fmt
from pamportal.crypto.licence import LicenceError, parse_licence, verify_licence
from tests.licensing.corpus import CORPUS, NOT_AFTER, NOT_BEFORE, NOW, OTHER_KEY, good_licence, good_payload

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
END = datetime(2026, 2, 1, tzinfo=timezone.utc)


def _mint(**changes) -> bytes:
    values = dict(customer="ACME Ltd", edition="enterprise", max_nodes=3, not_before=START, not_after=END, features=["sso"])
    values.update(changes)
    return fmt.mint(**values)


def _refusal(data: bytes, *, now: datetime = NOW, allow_test_keys: bool = True) -> LicenceError:
    with pytest.raises(LicenceError) as caught:
        parse_licence(data, now=now, allow_test_keys=allow_test_keys)
    return caught.value


def test_mint_and_read_back():
    data = _mint(licence_id="LIC-42", features=["audit-export", "sso"])
    licence = parse_licence(data, now=START + timedelta(days=1), allow_test_keys=True)
    assert licence.licence_id == "LIC-42"
    assert (licence.product, licence.customer, licence.edition, licence.max_nodes) == ("pamportal", "ACME Ltd", "enterprise", 3)
    assert licence.features == ("audit-export", "sso")
    assert (licence.not_before, licence.not_after) == (START, END)
    assert licence.key_id == fmt.TEST_VENDOR_KEY_ID and licence.test_key

    document = json.loads(data)
    assert list(document) == list(fmt.ENVELOPE_FIELDS)
    assert document["format"] == "pamportal-licence" and document["version"] == 1
    payload = json.loads(fmt._b64url_decode(document["payload"], "payload"))
    assert sorted(payload) == sorted(fmt.PAYLOAD_FIELDS)
    assert payload["not_after"] == "2026-02-01T00:00:00Z"


def test_non_ascii_customer_round_trips():
    data = _mint(customer="Société Générale — Zürich")
    assert parse_licence(data, now=START, allow_test_keys=True).customer == "Société Générale — Zürich"


def test_brackets_inside_strings_do_not_count_as_nesting():
    data = _mint(customer="[[[[[[{{{{{{ ACME \\\" ]]]]")
    assert parse_licence(data, now=START, allow_test_keys=True).customer == "[[[[[[{{{{{{ ACME \\\" ]]]]"


def test_the_test_key_is_refused_unless_allowed():
    error = _refusal(_mint(), now=START, allow_test_keys=False)
    assert error.code == "test_key"
    assert "test vendor key" in error.message


def test_the_production_key_is_public_only():
    vendor = Ed25519PublicKey.from_public_bytes(fmt._b64url_decode(fmt.VENDOR_PUBLIC_KEY, "key"))
    test = fmt.vendor_test_private_key().public_key()
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert vendor.public_bytes(*raw) != test.public_bytes(*raw)
    assert fmt._b64url_decode(fmt.TEST_VENDOR_PUBLIC_KEY, "key") == test.public_bytes(*raw)
    assert not fmt.VENDOR_KEYS[fmt.VENDOR_KEY_ID].test and fmt.VENDOR_KEYS[fmt.TEST_VENDOR_KEY_ID].test
    assert not [name for name in vars(fmt) if "PRIVATE" in name and "TEST" not in name]


def test_a_production_key_licence_needs_no_test_keys(monkeypatch):
    # Stand in for the vendor (whose private key is not here) with a key of our own.
    stand_in = Ed25519PrivateKey.generate()
    public = fmt.b64url_encode(stand_in.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    monkeypatch.setitem(fmt.VENDOR_KEYS, fmt.VENDOR_KEY_ID, fmt.VendorKey(fmt.VENDOR_KEY_ID, public, test=False))
    data = fmt.sign_document(good_payload(), private_key=stand_in, key_id=fmt.VENDOR_KEY_ID)
    licence = parse_licence(data, now=NOW, allow_test_keys=False)
    assert licence.key_id == fmt.VENDOR_KEY_ID and not licence.test_key


def test_validity_window_edges():
    data = _mint()
    assert parse_licence(data, now=START, allow_test_keys=True)
    assert parse_licence(data, now=END - timedelta(seconds=1), allow_test_keys=True)
    early = _refusal(data, now=START - timedelta(seconds=1))
    assert (early.code, early.message) == ("not_yet_valid", "This licence is not valid until 2026-01-01.")
    late = _refusal(data, now=END)
    assert (late.code, late.message) == ("expired", "This licence expired on 2026-02-01.")
    # verify_licence leaves the window to the caller (the status page reports it).
    assert verify_licence(data, allow_test_keys=True).not_after == END


def test_expiry_message_names_the_time_when_not_midnight():
    end = datetime(2026, 1, 31, 17, 30, tzinfo=timezone.utc)
    error = _refusal(_mint(not_after=end), now=end + timedelta(hours=1))
    assert error.message == "This licence expired on 2026-01-31 17:30 UTC."


def test_now_must_be_aware():
    with pytest.raises(ValueError):
        parse_licence(_mint(), now=datetime(2026, 1, 2), allow_test_keys=True)


def test_exactly_the_size_limit_is_accepted():
    data = good_licence().rstrip()
    padded = data + b" " * (fmt.MAX_BYTES - len(data))
    assert len(padded) == fmt.MAX_BYTES
    assert parse_licence(padded, now=NOW, allow_test_keys=True).licence_id == "LIC-CORPUS-1"
    assert _refusal(padded + b" ").code == "too_large"


def test_signature_is_bound_to_the_licence_context():
    # A signature the vendor key made over the same bytes for another purpose (no
    # licence context) does not pass.
    payload = json.dumps(good_payload()).encode()
    document = json.loads(fmt.sign_document(payload))
    document["signature"] = fmt.b64url_encode(fmt.vendor_test_private_key().sign(payload))
    assert _refusal(json.dumps(document).encode()).code == "tampered"


def test_missing_and_extra_fields_are_named():
    payload = good_payload()
    del payload["edition"]
    error = _refusal(fmt.sign_document(payload))
    assert (error.code, error.field) == ("missing_field", "edition")
    error = _refusal(fmt.sign_document(good_payload(zeta=1, alpha=2)))
    assert (error.code, error.field) == ("extra_field", "alpha")


def test_other_key_signature_is_unknown_or_tampered():
    resigned = fmt.sign_document(good_payload(), private_key=OTHER_KEY, key_id="other")
    assert _refusal(resigned).code == "unknown_key"
    assert _refusal(fmt.sign_document(good_payload(), private_key=OTHER_KEY)).code == "tampered"


def test_corpus_is_big_and_varied():
    assert len(CORPUS) >= 50
    assert len({case.code for case in CORPUS}) >= 15
    assert NOT_BEFORE < NOW < NOT_AFTER


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_corpus_case_is_refused_with_its_message(case):
    error = _refusal(case.data)
    assert error.code == case.code, error.message
    assert case.text in error.message
