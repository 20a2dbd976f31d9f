"""``GET /api/setup/v1/time`` on 2390 answers anyone, so it tells only the leader's
major.feature version, never the patch level; the follower's check still works with it
(and with a leader that still sends a full version)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from django.conf import settings

from pamportal.cluster import follower, protocol
from pamportal.cluster.follower_models import JoinState


def test_time_tells_only_major_feature(leader, client, settings):
    settings.PAM_VERSION = "7.3.41"
    data = client.get("/api/setup/v1/time").json()
    assert data["feature_version"] == "7.3"
    assert "41" not in str({k: v for k, v in data.items() if k not in ("time", "epoch")})
    assert "version" not in data


def test_the_follower_compares_major_feature_only():
    ours = settings.PAM_VERSION
    major, feature, patch = protocol.parse_version(ours)
    assert protocol.feature_version_compatible(f"{major}.{feature}", ours)
    assert protocol.feature_version_compatible(f"{major}.{feature}.{patch + 5}", ours)  # an older leader
    assert not protocol.feature_version_compatible(f"{major}.{feature + 1}", ours)
    assert not protocol.feature_version_compatible(f"{major + 1}.{feature}", f"{major}.{feature}.0")


def test_the_follower_preflight_reads_the_feature_version(monkeypatch, db, settings, tmp_path):
    """The follower's check against the leader's answer, as join_preflight runs it."""
    major, feature, _ = protocol.parse_version(settings.PAM_VERSION)
    answers = {"ok": True, "epoch": 0.0, "feature_version": f"{major}.{feature}"}
    seen = {}

    def fake_call(join, path, **kwargs):
        return 200, {**answers, "epoch": time.time()}

    monkeypatch.setattr(follower, "leader_call", fake_call)
    real = protocol.feature_version_compatible

    def spy(leader_version, own):
        seen["leader"] = leader_version
        return real(leader_version, own)

    monkeypatch.setattr(protocol, "feature_version_compatible", spy)
    _run_preflight(follower, monkeypatch)
    assert seen["leader"] == f"{major}.{feature}"


def _run_preflight(follower, monkeypatch):
    join = SimpleNamespace(
        state=JoinState.OPENED, leader_address="127.0.0.1", leader_version="0.0.1", own_address="127.0.0.12",
        leader_ports={"https": 1, "etcd_client": 1, "etcd_peer": 1, "setup_api": 1, "delegation": 1},
        preflight=None, save=lambda **kwargs: None,
    )
    monkeypatch.setattr(follower, "join_current", lambda: join)
    monkeypatch.setattr(follower, "_reachable", lambda host, port: (True, "ok"))
    monkeypatch.setattr(follower, "_port_free", lambda host, port: (True, "free"))
    follower.join_preflight(user=None)
    checks = {r["id"]: r for r in join.preflight}
    assert checks["version.compatible"]["ok"], checks["version.compatible"]


@pytest.mark.parametrize("body, code, message_part", [
    (b"not json", "bad_request", "the body is not JSON"),
    (b"\xef\xbb\xbf{}", "bad_request", "the body is not JSON"),
    (b'{"a": "x\x00"}', "bad_request", "the body is not JSON"),
    (b"\xff\xfe{}", "bad_request", "the body is not UTF-8"),
    (b'{"a": 1, "a": 2}', "bad_request", "a field appears twice"),
    (b'{"a": NaN}', "bad_request", "NaN and Infinity are not allowed in JSON"),
    (b"[" * 17 + b"]" * 17, "too_deep", "more than 16 levels"),
    (b'{"a": "\\ud800"}', "lone_surrogate", "the value of the field \"a\""),
    (b'{"a": "\\u0000"}', "nul_character", "the value of the field \"a\""),
    (b'{"a": ' + b"9" * 80 + b"}", "number_too_large", "an integer of 80 digits"),
    (b"{}" + b" " * 100, "too_large", "(64 bytes)"),
])
def test_strict_loading_keeps_the_setup_api_codes_and_messages(body, code, message_part):
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.loads_strict(body, max_bytes=64 if code == "too_large" else 4096)
    assert refused.value.code == code and message_part in refused.value.message
