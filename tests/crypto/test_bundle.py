"""The joining bundle format on its own: a bundle reads back exactly, each refusal a
follower can meet has its own code and message, every broken file in the corpus is
refused as it should be, and no mutation makes anything but a BundleError escape."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import random
from datetime import datetime, timedelta, timezone

import pytest

from pamportal.crypto import bundle as fmt
from pamportal.crypto import ca, mek
from pamportal.crypto.bundle import BundleError, bundle_create, bundle_open, join_proof, join_proof_verify, token_hash
from tests.crypto.bundle_corpus import CA_PEM, CORPUS, GOOD, MEK, NOW, TOKEN, Case, document, dump, good_body, sealed

T0 = datetime(2026, 5, 4, 9, 30, 15, 123456, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def cluster_ca():
    return ca.create_ca(name="pamportal cluster test", now=T0)


@pytest.fixture(scope="module")
def key():
    return mek.generate()


def _create(key, cluster_ca, **changes) -> bytes:
    values = dict(
        mek=key,
        cluster_id="c-1f2e",
        bundle_id="b-0042",
        leader_address="leader.example.com",
        leader_ports=dict(fmt.DEFAULT_PORTS),
        ca_cert_pem=cluster_ca.cert_pem.decode(),
        follower_address="10.0.0.7",
        leader_version="3.1.4",
        join_token=TOKEN,
        created=T0,
        expires=T0 + timedelta(hours=24),
    )
    values.update(changes)
    return bundle_create(**values)


def _refusal(data: bytes, *, mek: bytes, now: datetime, own_address: str | None = None) -> BundleError:
    with pytest.raises(BundleError) as caught:
        bundle_open(data, mek=mek, now=now, own_address=own_address)
    return caught.value


# --- The good path ------------------------------------------------------------------------------


def test_round_trip(key, cluster_ca):
    token = fmt.new_join_token()
    data = _create(key, cluster_ca, join_token=token, leader_address="Leader.Example.COM.", follower_address="FD00:0::7")
    opened = bundle_open(data, mek=key, now=T0 + timedelta(hours=1), own_address="fd00::7")

    assert (opened.cluster_id, opened.bundle_id) == ("c-1f2e", "b-0042")
    assert opened.created == T0.replace(microsecond=0)
    assert opened.expires == T0.replace(microsecond=0) + timedelta(hours=24)
    assert opened.leader_address == "leader.example.com"
    assert opened.follower_address == "fd00::7"
    assert opened.leader_ports == fmt.LeaderPorts(setup_api=2390, etcd_client=2379, etcd_peer=2380, https=443, delegation=2391)
    assert opened.leader_ports.as_dict() == fmt.DEFAULT_PORTS
    assert opened.ca_cert_pem == cluster_ca.cert_pem.decode()
    assert opened.ca_sha256 == ca.certificate_info(cluster_ca.cert_pem).sha256
    assert opened.join_token == token
    assert opened.leader_version == "3.1.4"


def test_an_address_in_brackets_is_refused_not_guessed_at(key, cluster_ca):
    # The one node-address rule (pamportal.core.addresses): an IP literal has no brackets.
    with pytest.raises(BundleError) as caught:
        _create(key, cluster_ca, join_token=fmt.new_join_token(), follower_address="[fd00::7]")
    assert caught.value.field == "body.follower_address" and "is written in brackets" in caught.value.message


def test_the_file_shows_only_the_header(key, cluster_ca):
    token = fmt.new_join_token()
    data = _create(key, cluster_ca, join_token=token)
    doc = json.loads(data)
    assert list(doc) == list(fmt.TOP_FIELDS)
    assert doc["format"] == "pamportal-joining-bundle" and doc["version"] == 1
    assert sorted(doc["header"]) == sorted(fmt.HEADER_FIELDS)
    assert doc["header"]["kdf"]["name"] == "HKDF-SHA256"
    assert doc["header"]["created"] == "2026-05-04T09:30:15Z"
    assert len(base64.urlsafe_b64decode(doc["header"]["kdf"]["salt"] + "==")) == 32
    assert len(base64.urlsafe_b64decode(doc["nonce"] + "==")) == 12
    for secret in (token, "10.0.0.7", "leader.example.com", "BEGIN CERTIFICATE", "2390"):
        assert secret.encode() not in data


def test_each_bundle_has_its_own_salt_and_nonce(key, cluster_ca):
    first, second = json.loads(_create(key, cluster_ca)), json.loads(_create(key, cluster_ca))
    assert first["header"]["kdf"]["salt"] != second["header"]["kdf"]["salt"]
    assert first["nonce"] != second["nonce"]
    assert first["ciphertext"] != second["ciphertext"]


def test_layout_does_not_matter_only_content(key, cluster_ca):
    """Key order and whitespace are not signed; the canonical header is."""
    data = _create(key, cluster_ca)
    doc = json.loads(data)
    reordered = {name: doc[name] for name in reversed(list(doc))}
    reordered["header"] = {name: doc["header"][name] for name in reversed(list(doc["header"]))}
    compact = json.dumps(reordered, separators=(",", ":")).encode()
    assert bundle_open(compact, mek=key, now=T0) == bundle_open(data, mek=key, now=T0)


def test_own_address_is_compared_in_its_canonical_spelling(key, cluster_ca):
    by_ip = _create(key, cluster_ca, follower_address="10.0.0.7")
    assert bundle_open(by_ip, mek=key, now=T0, own_address=" 10.0.0.7 ").follower_address == "10.0.0.7"
    by_name = _create(key, cluster_ca, follower_address="Node2.Example.com.")
    assert bundle_open(by_name, mek=key, now=T0, own_address="NODE2.example.com").follower_address == "node2.example.com"


def test_a_little_clock_skew_is_allowed(key, cluster_ca):
    data = _create(key, cluster_ca, created=T0 + timedelta(seconds=90), expires=T0 + timedelta(hours=1))
    assert bundle_open(data, mek=key, now=T0).bundle_id == "b-0042"


def test_repr_does_not_show_the_token(key, cluster_ca):
    opened = bundle_open(_create(key, cluster_ca), mek=key, now=T0)
    assert TOKEN not in repr(opened) and "b-0042" in repr(opened)


# --- The refusals a follower meets -------------------------------------------------------------


def test_wrong_mek(key, cluster_ca):
    error = _refusal(_create(key, cluster_ca), mek=mek.generate(), now=T0)
    assert error.code == "wrong_mek"
    assert error.message.startswith("The Master Encryption Key does not open this bundle (wrong MEK).")
    assert error.bundle_id == "b-0042"


def test_tampered_header_with_the_right_mek(key, cluster_ca):
    doc = json.loads(_create(key, cluster_ca))
    doc["header"]["expires"] = "2030-01-01T00:00:00Z"
    error = _refusal(dump(doc), mek=key, now=T0)
    assert error.code == "tampered"
    assert error.message == "The bundle was changed after it was made (tampered). Generate a new one on the leader."


def test_for_another_address(key, cluster_ca):
    error = _refusal(_create(key, cluster_ca), mek=key, now=T0, own_address="10.0.0.8")
    assert (error.code, error.field) == ("wrong_address", "body.follower_address")
    assert error.message == "This bundle is for 10.0.0.7, not for this node (10.0.0.8)."


def test_expired(key, cluster_ca):
    data = _create(key, cluster_ca)
    error = _refusal(data, mek=key, now=T0 + timedelta(hours=24))
    assert error.code == "expired"
    assert error.message == "This bundle expired at 2026-05-05 09:30:15 UTC; generate a new one on the leader."
    assert bundle_open(data, mek=key, now=T0 + timedelta(hours=24) - timedelta(seconds=1)).bundle_id == "b-0042"


def test_not_yet_valid(key, cluster_ca):
    data = _create(key, cluster_ca, created=T0 + timedelta(minutes=5), expires=T0 + timedelta(hours=2))
    error = _refusal(data, mek=key, now=T0)
    assert error.code == "not_yet_valid"
    assert error.message == (
        "This bundle was made at 2026-05-04 09:35:15 UTC, later than this node's clock (2026-05-04 09:30:15 UTC); "
        "check that both nodes keep time with NTP."
    )


def test_verified_refusals_carry_the_bundle_id(key, cluster_ca):
    error = _refusal(_create(key, cluster_ca), mek=key, now=T0 + timedelta(days=2))
    assert error.bundle_id == "b-0042"
    assert _refusal(b"{}", mek=key, now=T0).bundle_id is None


# --- The corpus ------------------------------------------------------------------------------------


def test_the_good_corpus_bundle_opens():
    opened = bundle_open(GOOD, mek=MEK, now=NOW, own_address="10.0.0.7")
    assert opened.ca_cert_pem == CA_PEM and opened.join_token == TOKEN


def test_the_corpus_is_large_and_covers_every_code():
    assert len(CORPUS) >= 60
    assert len({case.name for case in CORPUS}) == len(CORPUS)
    codes = {case.code for case in CORPUS}
    assert codes >= {
        "too_large", "empty", "not_utf8", "bom", "too_deep", "not_json", "duplicate_key", "not_a_bundle",
        "unsupported_version", "missing_field", "extra_field", "bad_field", "bad_encoding", "wrong_mek", "tampered",
        "bad_body", "expired", "not_yet_valid", "wrong_address", "bad_ca",
    }


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_corpus_case_is_refused_with_its_message(case: Case):
    error = _refusal(case.data, mek=case.mek, now=case.now, own_address=case.own_address)
    assert error.code == case.code
    assert error.message == case.message
    assert str(error) == case.message
    assert error.field == case.field


# --- Writing is checked too ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, code, field",
    [
        (dict(follower_address="node2"), "bad_field", "body.follower_address"),
        (dict(leader_address="0.0.0.0"), "bad_field", "body.leader_address"),
        (dict(leader_ports={"https": 443}), "missing_field", "body.leader_ports.setup_api"),
        (dict(join_token=fmt.b64url_encode(b"short")), "bad_field", "body.join_token"),
        (dict(join_token="short"), "bad_encoding", "body.join_token"),
        (dict(leader_version="v3"), "bad_field", "body.leader_version"),
        (dict(bundle_id="a b"), "bad_field", "header.bundle_id"),
        (dict(expires=T0), "bad_field", "header.expires"),
        (dict(ca_cert_pem="not a certificate"), "bad_ca", "body.ca_cert_pem"),
    ],
)
def test_create_refuses_what_open_would_refuse(key, cluster_ca, changes, code, field):
    with pytest.raises(BundleError) as caught:
        _create(key, cluster_ca, **changes)
    assert (caught.value.code, caught.value.field) == (code, field)


def test_create_refuses_a_node_certificate_as_ca(key, cluster_ca):
    node = ca.issue_node_certificate(
        ca_cert_pem=cluster_ca.cert_pem, ca_key_pem=cluster_ca.key_pem, names=["leader.example.com"], now=T0
    )
    with pytest.raises(BundleError) as caught:
        _create(key, cluster_ca, ca_cert_pem=node.cert_pem)
    assert caught.value.code == "bad_ca"


def test_create_refuses_the_ca_key(key, cluster_ca):
    with pytest.raises(BundleError) as caught:
        _create(key, cluster_ca, ca_cert_pem=(cluster_ca.cert_pem + cluster_ca.key_pem).decode())
    assert caught.value.code == "bad_ca" and "private key" in caught.value.message


def test_caller_mistakes_are_not_bundle_errors(key, cluster_ca):
    data = _create(key, cluster_ca)
    with pytest.raises(TypeError):
        bundle_open(data.decode(), mek=key, now=T0)
    with pytest.raises(ValueError):
        bundle_open(data, mek=key[:16], now=T0)
    with pytest.raises(ValueError):
        bundle_open(data, mek=key, now=T0.replace(tzinfo=None))
    with pytest.raises(ValueError):
        _create(key, cluster_ca, created=T0.replace(tzinfo=None))


# --- Join proof and token hash ----------------------------------------------------------------------


def test_join_proof_round_trip():
    request = fmt.canonical_json({"bundle_id": "b-0042", "address": "10.0.0.7", "version": "3.1.4", "token": TOKEN})
    proof = join_proof(MEK, request)
    assert len(proof) == 43
    assert join_proof_verify(MEK, request, proof)
    assert not join_proof_verify(bytes(32), request, proof)
    assert not join_proof_verify(MEK, request + b" ", proof)
    assert not join_proof_verify(MEK, request.replace(b"10.0.0.7", b"10.0.0.8"), proof)
    for garbage in (None, "", proof[:-1], proof + "A", "é" * 43, 42, proof.encode()):
        assert not join_proof_verify(MEK, request, garbage)


def test_join_proof_key_is_its_own():
    request = b"{}"
    proof = join_proof(MEK, request)
    import hmac as hmac_module

    for other in (MEK, mek.derive(MEK, "bundle-mek-check")):
        assert fmt.b64url_encode(hmac_module.new(other, request, hashlib.sha256).digest()) != proof
    expected = hmac_module.new(mek.derive(MEK, "join-request-proof"), request, hashlib.sha256).digest()
    assert proof == fmt.b64url_encode(expected)


def test_canonical_json_ignores_key_order():
    assert fmt.canonical_json({"b": 1, "a": "é"}) == fmt.canonical_json({"a": "é", "b": 1}) == b'{"a":"\\u00e9","b":1}'


def test_token_hash():
    assert token_hash("abc") == hashlib.sha256(b"abc").hexdigest()
    assert token_hash(TOKEN) != token_hash(TOKEN[:-1] + "A")
    token = fmt.new_join_token()
    assert len(token) == 43 and len(base64.urlsafe_b64decode(token + "=")) == 32
    assert fmt.new_join_token() != token


# --- Fuzzing: nothing but BundleError escapes -----------------------------------------------------

_EXPECTED = bundle_open(GOOD, mek=MEK, now=NOW)


def _open_or_refuse(data: bytes) -> None:
    try:
        opened = bundle_open(data, mek=MEK, now=NOW)
    except BundleError as error:
        assert error.code and error.message
        return
    # A mutation that still opens can only have touched the layout, never the content.
    assert opened == _EXPECTED


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        position = rng.randrange(len(buffer) + 1) if buffer else 0
        if kind == 0 and buffer:  # flip a bit
            index = min(position, len(buffer) - 1)
            buffer[index] ^= 1 << rng.randrange(8)
        elif kind == 1 and buffer:  # replace a byte
            buffer[min(position, len(buffer) - 1)] = rng.randrange(256)
        elif kind == 2:  # insert bytes
            buffer[position:position] = bytes(rng.choice(b'{}[]",:0123456789 \\\x00\xff') for _ in range(rng.randint(1, 8)))
        elif kind == 3:  # delete a run
            del buffer[position : position + rng.randint(1, 32)]
        elif kind == 4:  # truncate
            del buffer[position:]
        elif kind == 5 and buffer:  # duplicate a slice somewhere else
            start = rng.randrange(len(buffer))
            piece = buffer[start : start + rng.randint(1, 64)]
            buffer[position:position] = piece
        else:  # swap two base64 characters
            for _ in range(2):
                index = rng.randrange(len(buffer)) if buffer else 0
                if buffer and chr(buffer[index]).isalnum():
                    buffer[index] = rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    return bytes(buffer)


def test_fuzz_byte_mutations():
    rng = random.Random(20260301)
    for _ in range(3000):
        _open_or_refuse(_mutate(rng, GOOD))


_VALUES = [None, True, False, 0, -1, 1, 2**64, 1.5, "", "A", "AAAA", "é", "\u0000", "\ud800", [], [1], {}, {"a": 1},
           "2026-03-01T12:00:00Z", "HKDF-SHA256", "pamportal-joining-bundle"]


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for name, child in value.items():
            yield from _paths(child, prefix + (name,))


def test_fuzz_structure():
    """Replace, delete or add fields anywhere in the file with values of every type."""
    rng = random.Random(7)
    base = document()
    paths = [path for path in _paths(base) if path]
    for _ in range(1500):
        doc = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(paths)
            try:
                parent = doc
                for name in path[:-1]:
                    parent = parent[name]
                if not isinstance(parent, dict):
                    continue
                action = rng.randrange(3)
                if action == 0:
                    parent[path[-1]] = copy.deepcopy(rng.choice(_VALUES))
                elif action == 1:
                    parent.pop(path[-1], None)
                else:
                    parent[rng.choice(["x", "tag", "padding", "name"])] = copy.deepcopy(rng.choice(_VALUES))
            except (KeyError, TypeError):
                continue
        _open_or_refuse(json.dumps(doc).encode("utf-8", errors="surrogatepass"))


def test_fuzz_bodies_that_pass_the_tag():
    """Re-encrypted bodies with random fields: the body parser alone must hold."""
    rng = random.Random(11)
    names = list(good_body()) + ["extra"]
    for _ in range(300):
        body = good_body()
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(names)
            if rng.random() < 0.3:
                body.pop(name, None)
            else:
                body[name] = copy.deepcopy(rng.choice(_VALUES))
        if body == good_body():
            continue
        try:
            data = sealed(body=json.dumps(body).encode("utf-8", errors="surrogatepass"))
        except UnicodeEncodeError:
            continue
        with pytest.raises(BundleError):
            bundle_open(data, mek=MEK, now=NOW)
