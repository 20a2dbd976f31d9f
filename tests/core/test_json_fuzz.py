"""Fuzzing every JSON entry point through its real URL with a fixed seed: the licence
upload page, the follower's joining-bundle page, and the setup API (2390) join and
poll. Inputs carry lone surrogates and NUL (in keys and values), overlong numbers, deep
nesting, duplicate keys and wrong types. Every one must be refused with a 4xx answer
and exactly one audit event, change nothing else, and leave a chain that verifies.

The delegation API (2391) takes no JSON (its only endpoint is GET heartbeat), so it
has nothing to fuzz here. The repeat limit is lifted so that every refusal is recorded
one by one (the limit has its own tests in tests/cluster/test_flood.py)."""

from __future__ import annotations

import json
import random

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction
from pamportal.audit.models import AuditEvent
from pamportal.audit.selectors import audit_chain_verify
from tests.cluster.conftest import data_dir, fake_etcd, leader  # noqa: F401  (fixtures)

CASES = 220

ATOMS = [
    '"\\ud800"', '"\\udfff"', '"ok\\udbff"', '"\\udc00tail"', '"\\u0000"', '"a\\u0000b"', '["\\ud800"]',
    "1" * 5000, "-" + "9" * 70, "1e999999", "-1e999999", "1" + "0" * 400 + ".5", "0." + "0" * 3000 + "1",
    "[" * 40 + "]" * 40, '{"a":' * 40 + "1" + "}" * 40, "[" * 12000 + "]" * 12000,
    "null", "true", "false", "0", "-1", "1.5", '""', "[]", "{}", '[1,"x",null]', '{"k":"v"}', '"text"',
    '"\\ud83d\\ude00"', '{"\\ud800":1}', '{"a":1,"a":2}',
]
BAD_KEYS = ['"\\ud800"', '"\\u0000"', '"k\\udfff"', '"extra"', '"\\ud83d\\ude00"', '""']


def _pairs(document: dict) -> list[tuple[str, str]]:
    return [(json.dumps(k), json.dumps(v)) for k, v in document.items()]


def mutate(rng: random.Random, base: list[tuple[str, str]]) -> bytes:
    """``base`` (raw JSON key and value texts) changed one to three times, as text."""
    original = "{" + ",".join(f"{k}:{v}" for k, v in base) + "}"
    while True:
        pairs = list(base)
        for _ in range(rng.randint(1, 3)):
            move = rng.randrange(5)
            index = rng.randrange(len(pairs)) if pairs else 0
            if move == 0 and pairs:  # a value of another type, or unstorable
                pairs[index] = (pairs[index][0], rng.choice(ATOMS))
            elif move == 1:  # a key that is unstorable, unknown or a duplicate
                key = rng.choice(BAD_KEYS + [k for k, _ in pairs])
                pairs.insert(rng.randrange(len(pairs) + 1), (key, rng.choice(ATOMS + [v for _, v in pairs])))
            elif move == 2 and pairs:
                pairs.pop(index)
            elif move == 3 and pairs:
                pairs[index] = (rng.choice(BAD_KEYS), pairs[index][1])
            else:
                pairs.append(pairs[index] if pairs else (rng.choice(BAD_KEYS), "1"))
        text = "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
        roll = rng.random()
        if roll < 0.05:
            text = rng.choice(ATOMS)
        elif roll < 0.10:
            depth = rng.choice([3, 30, 5000])
            text = "[" * depth + text + "]" * depth
        if text != original:
            return text.encode("ascii")


def _one_event_each(send, inputs, action):
    """Send each input; each must be refused (4xx) with exactly one event of ``action``."""
    for data in inputs:
        last = AuditEvent.objects.order_by("-position").values_list("position", flat=True).first() or 0
        response = send(data)
        assert 400 <= response.status_code < 500, (response.status_code, data[:200])
        new = list(AuditEvent.objects.filter(position__gt=last).values_list("action", flat=True))
        assert new == [action], (new, data[:200])
    result = audit_chain_verify()
    assert result.ok, result.reason


@pytest.fixture(autouse=True)
def no_repeat_limit(settings):
    settings.PAM_AUDIT_REPEAT_LIMIT = 0


@pytest.fixture
def admin(make_user, login_client, client):
    return login_client(make_user("fuzz-admin", Role.ADMINISTRATOR), client)


def test_licence_upload_page(admin):
    from pamportal.crypto import licence as fmt
    from pamportal.licensing.models import Licence
    from tests.licensing.helpers import minted

    rng = random.Random(20261)
    good = minted()
    envelope = _pairs(json.loads(good))
    payload = _pairs(json.loads(fmt._b64url_decode(json.loads(good)["payload"], "payload")))
    inputs = []
    for i in range(CASES):
        if i % 3 == 2:  # a validly signed file whose payload is the fuzzed part
            inputs.append(fmt.sign_document(mutate(rng, payload)))
        else:
            inputs.append(mutate(rng, envelope))

    def send(data):
        return admin.post(reverse("licensing:upload"),
                          {"licence_file": SimpleUploadedFile("licence.json", data, content_type="application/json")})

    _one_event_each(send, inputs, AuditAction.LICENCE_REFUSED)
    assert not Licence.objects.exists()


def test_follower_bundle_page(make_user, login_client, client, settings, tmp_path, monkeypatch):
    from pamportal.cluster.follower_models import FollowerJoin
    from pamportal.crypto import mek
    from pamportal.nodes import keystore
    from tests.crypto.bundle_corpus import FOLLOWER, GOOD, MEK, NOW, good_body, sealed

    settings.PAM_DATA_DIR = tmp_path
    monkeypatch.setattr("pamportal.cluster.follower.timezone.now", lambda: NOW)
    follower = login_client(make_user("follower-admin", Role.ADMINISTRATOR), client)
    rng = random.Random(20262)
    top = _pairs(json.loads(GOOD))
    body = _pairs(good_body())
    inputs = []
    for i in range(CASES):
        if i % 3 == 2:  # authentic (the tag verifies), the body is the fuzzed part
            inputs.append(sealed(body=mutate(rng, body)))
        else:
            inputs.append(mutate(rng, top))

    def send(data):
        return follower.post(reverse("setup:join"), {"bundle": SimpleUploadedFile("join.bundle", data),
                                                     "mek": mek.encode(MEK), "own_address": FOLLOWER}, secure=True)

    _one_event_each(send, inputs, AuditAction.JOIN_REFUSED_LOCALLY)
    assert not FollowerJoin.objects.exists() and not keystore.mek_exists()


def test_setup_api_join_and_poll(leader, make_user, client):  # noqa: F811
    from pamportal.cluster.models import BundleState, JoiningBundle, JoinRequest
    from tests.cluster.conftest import follower_request, generate_bundle

    bundle = generate_bundle(make_user("operator1", Role.OPERATOR))
    base = _pairs(follower_request(bytes(bundle.file), leader["mek"]))
    rng = random.Random(20263)
    inputs = [mutate(rng, base) for _ in range(CASES)]

    def send(data):
        return client.post("/api/setup/v1/join", data=data, content_type="application/json")

    _one_event_each(send, inputs, AuditAction.CLUSTER_JOIN_REFUSED)
    assert not JoinRequest.objects.exists()
    assert JoiningBundle.objects.get(pk=bundle.pk).state == BundleState.OUTSTANDING

    # Polls: a random request id and a bearer of every kind of junk.
    import uuid

    junk = ["", "\ud800", "\x00", "x" * 5000, "Bearer", "\ud83d\ude00", "1e999999"]
    polls = [(uuid.UUID(int=rng.getrandbits(128)), rng.choice(junk) + rng.choice(junk)) for _ in range(60)]

    def poll(item):
        request_id, bearer = item
        return client.get(f"/api/setup/v1/join/{request_id}", HTTP_AUTHORIZATION=f"Bearer {bearer}")

    _one_event_each(poll, polls, AuditAction.CLUSTER_JOIN_POLL_REFUSED)
