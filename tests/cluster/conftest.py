"""A finalised leader (through the setup services), an in-memory etcd, users of every
role, and helpers to walk a follower's join through the API."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import pytest
from django.conf import settings
from django.utils import timezone
from django_otp.oath import TOTP

from pamportal.accounts.models import TOTPDevice
from pamportal.accounts.roles import Role
from pamportal.cluster import bundles, connections
from pamportal.cluster.etcd import (
    EtcdUnavailable,
    LearnerNotReady,
    Member,
    MemberNotFound,
    MemberNotLearner,
    PeerURLExists,
    TooManyLearners,
)
from pamportal.cluster.models import JoinRequest
from pamportal.cluster.protocol import proof_message
from pamportal.crypto.bundle import bundle_open, join_proof
from pamportal.crypto.ca import make_csr
from pamportal.jobs.engine import job_execute
from pamportal.nodes import keystore
from pamportal.setup.wizard import setup_finalise
from tests.setup.helpers import through_mek
from tests.support.audit import events  # noqa: F401  (re-exported to the cluster tests)
from tests.support.totp import fresh_step

LEADER = "node1.example.com"  # tests.setup.helpers.ADDRESS
FOLLOWER = "127.0.0.12"


@pytest.fixture(autouse=True)
def data_dir(data_dir, settings):
    """Every cluster test gets its own data dir (tests/support/fixtures.py) and short
    join waits."""
    settings.PAM_JOIN_WAIT_SECONDS = 0.5
    settings.PAM_JOIN_POLL_INTERVAL = 0.01
    return data_dir


# --- an in-memory etcd ---------------------------------------------------------------------
@dataclass
class FakeEtcd:
    """The methods of ``EtcdClient`` the leader uses, over a dict of members.

    ``follower_starts``: whether a learner "starts" (gets a name and client URLs) when
    the leader looks at it; ``not_ready_times``: promotes refused with LearnerNotReady
    before one succeeds; ``fail_on``: a method name that raises EtcdUnavailable.
    """

    members: dict[int, Member] = field(default_factory=dict)
    follower_starts: bool = True
    not_ready_times: int = 0
    fail_on: set[str] = field(default_factory=set)
    calls: list[tuple[str, object]] = field(default_factory=list)
    next_id: int = 0x1000

    def __post_init__(self):
        leader = Member(id=0xA1, name=LEADER, peer_urls=(connections.member_peer_url(LEADER),),
                        client_urls=(connections.member_client_url(LEADER),))
        self.members[leader.id] = leader

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail_on:
            raise EtcdUnavailable([("https://fake:2379", "connection refused")])

    def member_list(self) -> list[Member]:
        self._maybe_fail("member_list")
        self.calls.append(("member_list", None))
        if self.follower_starts:
            for mid, m in list(self.members.items()):
                if m.is_learner and not m.started:
                    address = m.peer_urls[0].split("//")[1].rsplit(":", 1)[0]
                    self.members[mid] = replace(m, name=address, client_urls=(connections.member_client_url(address),))
        return list(self.members.values())

    def member_add(self, peer_urls, *, learner=True, wait=0.0):
        self._maybe_fail("member_add")
        self.calls.append(("member_add", tuple(peer_urls)))
        for m in self.members.values():
            if set(peer_urls) & set(m.peer_urls):
                raise PeerURLExists(9, "etcdserver: Peer URLs already exists")
        if learner and any(m.is_learner for m in self.members.values()):
            raise TooManyLearners(9, "etcdserver: too many learner members in cluster")
        self.next_id += 1
        member = Member(id=self.next_id, peer_urls=tuple(peer_urls), is_learner=learner)
        self.members[member.id] = member
        return member, list(self.members.values())

    def member_promote(self, member_id):
        self._maybe_fail("member_promote")
        self.calls.append(("member_promote", member_id))
        member = self.members.get(int(member_id))
        if member is None:
            raise MemberNotFound(5, "etcdserver: member not found")
        if not member.is_learner:
            raise MemberNotLearner(9, "etcdserver: can only promote a learner member")
        if self.not_ready_times > 0:
            self.not_ready_times -= 1
            raise LearnerNotReady(9, "etcdserver: can only promote a learner member which is in sync with leader")
        self.members[member.id] = replace(member, is_learner=False)
        return list(self.members.values())

    def member_remove(self, member_id, *, wait=0.0):
        self._maybe_fail("member_remove")
        self.calls.append(("member_remove", member_id))
        if int(member_id) not in self.members:
            raise MemberNotFound(5, "etcdserver: member not found")
        del self.members[int(member_id)]
        return list(self.members.values())

    def health(self, endpoint=None):
        return True, "healthy"

    def count(self, name: str) -> int:
        return sum(1 for call, _ in self.calls if call == name)

    def by_peer(self, address: str) -> Member | None:
        url = connections.member_peer_url(address)
        return next((m for m in self.members.values() if url in m.peer_urls), None)


@pytest.fixture
def fake_etcd(monkeypatch) -> FakeEtcd:
    fake = FakeEtcd()
    monkeypatch.setattr(connections, "etcd_client", lambda **kwargs: fake)
    return fake


# --- the leader ---------------------------------------------------------------------------
@pytest.fixture
def leader(db, make_user, fake_etcd):
    """A finalised standalone node (licence for 5 nodes), through the setup services."""
    admin = make_user("leader-admin", Role.ADMINISTRATOR)
    key = through_mek(admin)
    setup_finalise(user=admin)
    assert keystore.mek_load() == key
    return {"admin": admin, "mek": key}


@pytest.fixture
def operator(make_user):
    return make_user("operator1", Role.OPERATOR)


@pytest.fixture
def approvers(make_user):
    return [make_user(f"approver{i}", Role.APPROVER) for i in (1, 2, 3)]


_NEXT_OFFSET: dict[int, int] = {}


@pytest.fixture(autouse=True)
def _fresh_totp_offsets():
    _NEXT_OFFSET.clear()


def code_for(user, offset: int | None = None) -> str:
    """A valid code for ``user``. A code is accepted once (replays are refused), so
    successive calls walk through the steps django-otp tolerates: -1, 0, +1."""
    if offset is None:
        offset = _NEXT_OFFSET.get(user.pk, -1)
        _NEXT_OFFSET[user.pk] = offset + 1
    device = TOTPDevice.objects.get(user=user, confirmed=True)
    fresh_step(step=device.step, t0=device.t0)  # not in a step's last second: the server checks this step
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, 0)  # real time, not the learnt drift
    totp.time = totp.time + offset * device.step
    return f"{totp.token():0{device.digits}d}"


def run_job(job_id: int) -> str:
    return job_execute(job_id=job_id, worker_id="test-worker")


# --- the follower's side ---------------------------------------------------------------------
def generate_bundle(user, address: str = FOLLOWER):
    """A bundle through the service and its job, as a worker would run it."""
    bundle = bundles.bundle_generate(user=user, follower_address=address)
    assert run_job(bundle.job_id) == "succeeded"
    bundle.refresh_from_db()
    return bundle


def follower_request(bundle_bytes: bytes, mek: bytes, *, address: str = FOLLOWER, version: str | None = None,
                     **overrides) -> dict:
    """What a follower sends: opened with its MEK, a fresh key and CSR, the proof."""
    opened = bundle_open(bundle_bytes, mek=mek, now=timezone.now())
    csr_pem, _key = make_csr(names=[address])
    payload = {
        "bundle_id": opened.bundle_id, "token": opened.join_token, "follower_address": address,
        "follower_version": version or settings.PAM_VERSION, "csr_pem": csr_pem.decode(),
        "preflight_summary": {"errors": 0, "warnings": 1, "passed": 17},
    }
    payload.update({k: v for k, v in overrides.items() if k != "proof"})
    payload["proof"] = overrides.get("proof") or join_proof(mek, proof_message(payload))
    return payload


def post_join(client, payload) -> tuple[int, dict]:
    response = client.post("/api/setup/v1/join", data=json.dumps(payload), content_type="application/json")
    return response.status_code, response.json()


def join_request_made(client, user, mek, address: str = FOLLOWER):
    """A bundle generated by ``user`` and used by a follower: the pending request."""
    bundle = generate_bundle(user, address)
    status, body = post_join(client, follower_request(bytes(bundle.file), mek, address=address))
    assert status == 201, body
    return JoinRequest.objects.get(public_id=body["request_id"]), body
