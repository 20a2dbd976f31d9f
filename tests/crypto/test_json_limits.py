"""The strict JSON of the licence and the joining bundle names the real problem: too deep,
a number too large, a lone surrogate, a NUL; never "not a pamportal licence" or "not a
JSON object" for those, in the file or in the signed/encrypted part."""

from __future__ import annotations

import pytest

from pamportal.crypto import bundle as bundle_fmt
from pamportal.crypto import licence as fmt
from pamportal.crypto import strictjson
from tests.crypto.bundle_corpus import MEK, NOW, good_body, sealed


def _licence_refusal(data: bytes) -> fmt.LicenceError:
    with pytest.raises(fmt.LicenceError) as caught:
        fmt.verify_licence(data, allow_test_keys=True)
    return caught.value


def _bundle_refusal(data: bytes) -> bundle_fmt.BundleError:
    with pytest.raises(bundle_fmt.BundleError) as caught:
        bundle_fmt.bundle_open(data, mek=MEK, now=NOW)
    return caught.value


HUGE_INT = b"1" + b"0" * 5000


@pytest.mark.parametrize("data, code, words", [
    (b"[" * 30 + b"]" * 30, "too_deep", "more than 4 levels deep"),
    (b'{"format": "pamportal-licence", "version": ' + HUGE_INT + b"}", "number_too_large", "an integer of 5001 digits"),
    (b'{"format": "pamportal-licence", "version": 1e999999}', "number_too_large", "1e999999 is beyond range"),
    (b'{"format": "pamportal-licence", "version": 1, "key_id": "\\ud800"}', "lone_surrogate", 'field "key_id"'),
    (b'{"format": "pamportal-licence", "\\u0000": 1}', "nul_character", "a field name"),
])
def test_the_licence_file_names_the_real_problem(data, code, words):
    error = _licence_refusal(data)
    assert error.code == code and words in error.message
    assert "not a pamportal licence" not in error.message and "not valid JSON" not in error.message


@pytest.mark.parametrize("payload, code", [
    (b'{"a":[[[[[[1]]]]]]}', "too_deep"),
    (b'{"max_nodes":' + HUGE_INT + b"}", "number_too_large"),
    (b'{"max_nodes":1e999999}', "number_too_large"),
    (b'{"customer":"\\udc00"}', "lone_surrogate"),
    (b'{"customer":"\\u0000"}', "nul_character"),
])
def test_the_signed_payload_names_the_real_problem_not_not_an_object(payload, code):
    error = _licence_refusal(fmt.sign_document(payload))
    assert error.code == code
    assert "not a JSON object" not in error.message


@pytest.mark.parametrize("data, code", [
    (b"[" * 30 + b"]" * 30, "too_deep"),
    (b'{"format": "pamportal-joining-bundle", "version": ' + HUGE_INT + b"}", "number_too_large"),
    (b'{"format": "pamportal-joining-bundle", "version": -1e999999}', "number_too_large"),
    (b'{"format": "pamportal-joining-bundle", "\\ud800": 1}', "lone_surrogate"),
    (b'{"format": "pamportal-joining-bundle\\u0000"}', "nul_character"),
])
def test_the_bundle_file_names_the_real_problem(data, code):
    error = _bundle_refusal(data)
    assert error.code == code
    assert "not a joining bundle" not in error.message and "not valid JSON" not in error.message


@pytest.mark.parametrize("body, code", [
    (b'{"a":[[[[[[[1]]]]]]]}', "too_deep"),
    (b'{"leader_ports":{"https":' + HUGE_INT + b"}}", "number_too_large"),
    (b'{"leader_address":"\\ud800"}', "lone_surrogate"),
])
def test_the_bundle_body_names_the_real_problem_not_not_a_bundles_contents(body, code):
    error = _bundle_refusal(sealed(body=body))
    assert error.code == code and error.field == "body"
    assert "not a joining bundle's contents" not in error.message


def test_the_good_body_still_opens():
    import json

    assert bundle_fmt.bundle_open(sealed(body=json.dumps(good_body()).encode()), mek=MEK, now=NOW)


def test_strictjson_accepts_paired_surrogates_and_ordinary_numbers():
    assert strictjson.loads('{"k":"\\ud83d\\ude00","n":[1,-2,1.5,1e10,' + "9" * 64 + "]}") == {
        "k": "😀", "n": [1, -2, 1.5, 1e10, int("9" * 64)],
    }
    with pytest.raises(strictjson.NumberTooLarge):
        strictjson.loads("9" * 65)
    with pytest.raises(strictjson.BadText) as caught:
        strictjson.loads('[["ok", "\\udbff"]]')
    assert caught.value.problem == strictjson.LONE_SURROGATE
