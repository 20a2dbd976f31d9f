"""The etcd layer: the v3 JSON gateway client, the member process, quorum arithmetic.

The process tests run real etcd 3.4 members (Debian's etcd-server) on 127.0.0.11-13
with a throwaway CA, grow a cluster learner by learner, check it with etcdctl, and
shrink it again.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pamportal.cluster import etcd_process
from pamportal.cluster.etcd import (
    EtcdClient,
    EtcdError,
    EtcdTLSError,
    EtcdUnavailable,
    LearnerNotReady,
    LearnerRPCUnsupported,
    Member,
    MemberNotFound,
    MemberNotLearner,
    NotEnoughStartedMembers,
    PeerURLExists,
    TooManyLearners,
    UnhealthyCluster,
    _error_from_body,
    format_member_id,
    member_id_from_hex,
    member_id_to_json,
    parse_member_id,
)
from pamportal.cluster.etcd_process import MemberConfig
from pamportal.cluster.quorum import failure_tolerance, quorum, quorum_ok_after_remove
from tests.cluster import etcd_support
from tests.cluster.etcd_support import EtcdTestClient, ThrowawayCA, pick_ports, port_free

ADDRESSES = {"n1": "127.0.0.11", "n2": "127.0.0.12", "n3": "127.0.0.13"}

needs_etcd = pytest.mark.skipif(
    not (shutil.which("etcd") and shutil.which("etcdctl")), reason="etcd / etcdctl not installed (etcd-server)"
)


def voter(id, name="n", learner=False, started=True):
    return Member(
        id=id,
        name=name if started else "",
        peer_urls=(f"https://10.0.0.{id}:2380",),
        client_urls=(f"https://10.0.0.{id}:2379",) if started else (),
        is_learner=learner,
    )


# -- pure helpers ------------------------------------------------------------------


def test_failure_tolerance_and_quorum():
    assert [failure_tolerance(n) for n in range(0, 8)] == [0, 0, 0, 1, 1, 2, 2, 3]
    assert [quorum(n) for n in range(1, 6)] == [1, 2, 2, 3, 3]
    with pytest.raises(ValueError):
        failure_tolerance(-1)


def test_quorum_ok_after_remove():
    three = [voter(1), voter(2), voter(3)]
    assert quorum_ok_after_remove(three, 3)  # 2 healthy left >= quorum(3) = 2
    assert not quorum_ok_after_remove(three[:2], 2)  # 1 left < quorum(2) = 2
    assert not quorum_ok_after_remove(three[:1], 1)  # never remove the last member
    # one voter is dead: removing it is the fix; removing a healthy one loses quorum
    assert quorum_ok_after_remove(three, 3, healthy_ids={1, 2})
    assert not quorum_ok_after_remove(three, 2, healthy_ids={1, 2})
    # an unstarted voter does not count as healthy by default
    assert not quorum_ok_after_remove([voter(1), voter(2), voter(3, started=False)], 1)
    # learners never affect quorum, and do not count towards it
    with_learner = three[:2] + [voter(9, learner=True, started=False)]
    assert quorum_ok_after_remove(with_learner, 9)
    assert not quorum_ok_after_remove(with_learner, 1)
    assert quorum_ok_after_remove(three, 42)  # not a member: nothing to lose


def test_member_ids_and_json():
    big = 2**64 - 1
    assert parse_member_id(str(big)) == big and member_id_to_json(big) == str(big)
    assert format_member_id(0x8E9E05C52164694D) == "8e9e05c52164694d"
    assert member_id_from_hex("8e9e05c52164694d") == 0x8E9E05C52164694D
    for bad in ("-1", str(2**64), "abc"):
        with pytest.raises(ValueError):
            parse_member_id(bad)
    m = Member.from_json({"ID": "14541993136764895489", "peerURLs": ["https://127.0.0.12:2380"], "isLearner": True})
    assert m.id == 14541993136764895489 and m.is_learner and not m.started and m.name == ""
    m = Member.from_json({"ID": "7", "name": "n1", "peerURLs": ["p"], "clientURLs": ["c"]})
    assert m.started and m.is_voter


def test_gateway_errors_map_to_exceptions():
    def err(message, status=412, code=9):
        return _error_from_body(status, json.dumps({"error": message, "message": message, "code": code}).encode(), "e")

    e = err("etcdserver: can only promote a learner member which is in sync with leader")
    assert isinstance(e, LearnerNotReady) and e.code == 9 and e.http_status == 412
    assert isinstance(err("etcdserver: can only promote a learner member"), MemberNotLearner)
    assert isinstance(err("etcdserver: member not found", 404, 5), MemberNotFound)
    assert isinstance(err("etcdserver: too many learner members in cluster"), TooManyLearners)
    assert isinstance(err("etcdserver: rpc not supported for learner"), LearnerRPCUnsupported)
    plain = _error_from_body(500, b"oops", "e")
    assert type(plain) is EtcdError and plain.code == 500 and plain.message == "oops"


def test_gateway_errors_match_etcds_own_texts():
    """etcd 3.4's texts (rpctypes) as the gateway returns them, each to its class."""
    def err(message, status=400, code=9):
        return _error_from_body(status, json.dumps({"error": message, "message": message, "code": code}).encode(), "e")

    assert isinstance(err("etcdserver: Peer URLs already exists", code=6), PeerURLExists)
    assert isinstance(err("etcdserver: re-configuration failed due to not enough started members"),
                      NotEnoughStartedMembers)
    assert isinstance(err("etcdserver: unhealthy cluster", 503, 14), UnhealthyCluster)
    assert isinstance(err("etcdserver: member not found", 404, 5), MemberNotFound)
    # a text that only resembles one is a plain error
    assert type(err("etcdserver: peer urls exist somewhere")) is EtcdError


def test_command_line_tls_everywhere_and_own_address_only(tmp_path):
    cfg = MemberConfig(
        name="n2", address="127.0.0.12", data_dir=tmp_path / "d", ca_file="ca.pem", cert_file="c.pem",
        key_file="k.pem", initial_cluster="n1=https://127.0.0.11:2380,n2=https://127.0.0.12:2380",
        initial_state="existing", initial_cluster_token="tok",
    )
    argv = etcd_process.command_line(cfg, binary="/usr/bin/etcd")
    flags = dict(a[2:].split("=", 1) for a in argv[1:])
    assert flags["listen-client-urls"] == flags["advertise-client-urls"] == "https://127.0.0.12:2379"
    assert flags["listen-peer-urls"] == flags["initial-advertise-peer-urls"] == "https://127.0.0.12:2380"
    assert flags["client-cert-auth"] == flags["peer-client-cert-auth"] == "true"
    assert flags["cert-file"] == flags["peer-cert-file"] == "c.pem"
    assert flags["key-file"] == flags["peer-key-file"] == "k.pem"
    assert flags["trusted-ca-file"] == flags["peer-trusted-ca-file"] == "ca.pem"
    assert flags["initial-cluster-state"] == "existing" and flags["initial-cluster-token"] == "tok"
    assert flags["enable-v2"] == "false"
    assert not any("0.0.0.0" in a or "http://" in a for a in argv)
    with pytest.raises(ValueError):
        MemberConfig(**{**cfg.__dict__, "initial_state": "join"})


def test_certificate_addresses():
    assert etcd_process.certificate_addresses("127.0.0.12") == ["127.0.0.12", "127.0.0.1"]
    assert etcd_process.certificate_addresses("127.0.0.1") == ["127.0.0.1"]
    assert etcd_process.certificate_addresses("10.1.2.3") == ["10.1.2.3"]
    assert etcd_process.certificate_addresses("node1.example") == ["node1.example"]


def test_initial_cluster_for_join():
    members = [
        Member(id=1, name="n1", peer_urls=("https://127.0.0.11:2380",), client_urls=("x",)),
        Member(id=2, peer_urls=("https://127.0.0.12:2380",), is_learner=True),
    ]
    assert (
        etcd_process.initial_cluster_for_join(members, 2, "n2")
        == "n1=https://127.0.0.11:2380,n2=https://127.0.0.12:2380"
    )
    with pytest.raises(ValueError):
        etcd_process.initial_cluster_for_join(members, 3, "n3")


# -- fixtures for real members -----------------------------------------------------


class Pki:
    def __init__(self, root: Path):
        self.ca = ThrowawayCA(root / "ca")
        # loopback node certificates also name 127.0.0.1: see certificate_addresses
        self.nodes = {n: self.ca.issue(n, etcd_process.certificate_addresses(a)) for n, a in ADDRESSES.items()}
        self.client = self.ca.issue("pamportal-client", [], server=False, client=True)
        self.rogue_ca = ThrowawayCA(root / "rogue", name="not the cluster CA")
        self.rogue_client = self.rogue_ca.issue("rogue-client", [], server=False, client=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("etcd-pki"))


class Cluster:
    """Starts members and remembers every process so the fixture can stop them."""
    def __init__(self, pki: Pki, root: Path):
        self.pki = pki
        self.root = root
        self.procs: dict[str, object] = {}
        self.configs: dict[str, MemberConfig] = {}
        self._ports: dict[str, tuple[int, int]] = {}

    def config(self, name: str, initial_cluster: str, state: str) -> MemberConfig:
        address = ADDRESSES[name]
        cport, pport = self.ports(name)
        node = self.pki.nodes[name]
        return MemberConfig(
            name=name, address=address, client_port=cport, peer_port=pport, data_dir=self.root / name,
            ca_file=self.pki.ca.ca_file, cert_file=node.cert_file, key_file=node.key_file,
            initial_cluster=initial_cluster, initial_state=state, initial_cluster_token="pamportal-test",
        )

    def ports(self, name: str) -> tuple[int, int]:
        if name not in self._ports:
            self._ports[name] = pick_ports(ADDRESSES[name])
        return self._ports[name]

    def peer_url(self, name: str) -> str:
        return etcd_process.peer_url(ADDRESSES[name], self.ports(name)[1])

    def client_url(self, name: str) -> str:
        return etcd_process.client_url(ADDRESSES[name], self.ports(name)[0])

    def start(self, cfg: MemberConfig):
        proc = etcd_support.start(cfg, self.root / f"{cfg.name}.log")
        self.procs[cfg.name] = proc
        self.configs[cfg.name] = cfg
        return proc

    def client(self, *names: str, timeout: float = 5.0, cert=None) -> EtcdTestClient:
        cert = cert or self.pki.client
        return EtcdTestClient(
            [self.client_url(n) for n in names], str(self.pki.ca.ca_file), str(cert.cert_file),
            str(cert.key_file), timeout=timeout,
        )

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop_all(self):
        for proc in self.procs.values():
            etcd_support.stop(proc)


@pytest.fixture(scope="module")
def cluster(pki, tmp_path_factory):
    """A one-member cluster on 127.0.0.11 (tests may grow it)."""
    c = Cluster(pki, tmp_path_factory.mktemp("etcd-members"))
    try:
        cfg = c.config("n1", f"n1={c.peer_url('n1')}", "new")
        proc = c.start(cfg)
        try:
            etcd_support.wait_healthy(c.client("n1"), timeout=20, proc=proc)
        except etcd_support.EtcdStartError as exc:
            raise AssertionError(f"{exc}\n{c.log('n1')}") from exc
        yield c
    finally:
        c.stop_all()


def etcdctl_members(c: Cluster, *names: str) -> list[dict]:
    out = subprocess.run(
        [
            "etcdctl", "--endpoints", ",".join(c.client_url(n) for n in names),
            "--cacert", str(c.pki.ca.ca_file), "--cert", str(c.pki.client.cert_file),
            "--key", str(c.pki.client.key_file), "--command-timeout=5s",
            "member", "list", "-w", "json",
        ],
        capture_output=True, text=True, timeout=15, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["members"]


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def join(c: Cluster, leader: EtcdClient, name: str) -> Member:
    """The join, in etcd's order: add as learner, start with state existing, catch up, promote."""
    new, members = leader.member_add([c.peer_url(name)], learner=True, wait=10)
    assert new.is_learner and not new.started and new.id in {m.id for m in members}
    cfg = c.config(name, etcd_process.initial_cluster_for_join(members, new.id, name), "existing")
    proc = c.start(cfg)
    try:
        status = etcd_support.wait_healthy(leader, timeout=20, endpoint=cfg.client_url, proc=proc)
        assert status.is_learner and status.member_id == new.id
        wait_until(lambda: leader.learner_in_sync(cfg.client_url), 15, what=f"{name} in sync")
        leader.promote_when_ready(new.id, timeout=15)
    except (etcd_support.EtcdStartError, EtcdError) as exc:
        raise AssertionError(f"{exc}\n{c.log(name)}") from exc
    promoted = {m.id: m for m in leader.member_list()}[new.id]
    assert promoted.is_voter and promoted.started and promoted.name == name
    return promoted


# -- real members ------------------------------------------------------------------


@needs_etcd
@pytest.mark.processes
def test_grow_to_three_voters_then_shrink(cluster):
    c = cluster
    leader = c.client("n1")
    [first] = leader.member_list()
    assert first.name == "n1" and first.started and first.is_voter
    assert failure_tolerance(1) == 0

    # n2: a learner first; while it is one, requests it cannot serve go to the next endpoint
    new, members = leader.member_add([c.peer_url("n2")], learner=True)
    with pytest.raises(TooManyLearners):  # etcd 3.4: one learner at a time
        leader.member_add([c.peer_url("n3")], learner=True)
    with pytest.raises(LearnerNotReady):  # not started: not in sync
        leader.member_promote(new.id)
    cfg2 = c.config("n2", etcd_process.initial_cluster_for_join(members, new.id, "n2"), "existing")
    proc2 = c.start(cfg2)
    etcd_support.wait_healthy(leader, timeout=20, endpoint=cfg2.client_url, proc=proc2)
    learner_first = c.client("n2", "n1")
    assert {m.id for m in learner_first.member_list()} == {first.id, new.id}
    wait_until(lambda: leader.learner_in_sync(cfg2.client_url), 15, what="n2 in sync")
    leader.promote_when_ready(new.id, timeout=15)
    with pytest.raises(MemberNotLearner):
        leader.member_promote(new.id)
    assert leader.promote_when_ready(new.id, timeout=1)  # idempotent: already a voter

    # n3 through the same steps (etcd refuses changes for ~5 s after a promote: wait=)
    join(c, leader, "n3")

    client = c.client("n1", "n2", "n3")
    listed = etcdctl_members(c, "n1", "n2", "n3")  # the real client
    assert len(listed) == 3
    assert all(m.get("name") and m.get("clientURLs") and not m.get("isLearner") for m in listed)
    ours = {m.id: m for m in client.member_list()}
    assert {m["ID"] for m in listed} == set(ours)  # etcdctl ids are numbers, ours ints
    assert sorted(m["name"] for m in listed) == ["n1", "n2", "n3"]
    voters = [m for m in ours.values() if m.is_voter and m.started]
    assert failure_tolerance(len(voters)) == 1

    # every member reports the same leader; data written once is read everywhere
    statuses = [client.status(c.client_url(n)) for n in ("n1", "n2", "n3")]
    assert len({s.leader for s in statuses}) == 1 and statuses[0].leader in ours
    assert sum(s.is_leader for s in statuses) == 1
    client.put("/pamportal/test/k", "v\u00e9")
    assert c.client("n3").get("/pamportal/test/k") == "v\u00e9".encode()
    assert client.get_prefix("/pamportal/test/") == {b"/pamportal/test/k": "v\u00e9".encode()}
    assert client.delete("/pamportal/test/k") == 1 and client.get("/pamportal/test/k") is None
    for n in ("n1", "n2", "n3"):
        assert client.health(c.client_url(n)) == (True, "healthy")

    # remove n3: allowed (2 healthy voters left >= quorum(3)); the member stops itself
    n3 = next(m for m in ours.values() if m.name == "n3")
    members = client.member_list()
    assert quorum_ok_after_remove(members, n3.id)
    remaining = client.member_remove(n3.id, wait=10)
    assert sorted(m.name for m in remaining) == ["n1", "n2"]
    wait_until(lambda: c.procs["n3"].poll() is not None, 10, what="removed n3 to exit")
    client = c.client("n1", "n2")
    members = client.member_list()
    assert len(etcdctl_members(c, "n1", "n2")) == 2
    assert failure_tolerance(len([m for m in members if m.is_voter])) == 0

    # removing either of the two voters left would lose quorum: refused
    for m in members:
        assert not quorum_ok_after_remove(members, m.id)

    # a learner whose member never starts: never promotable, removable, then gone
    ghost, _ = client.member_add([c.peer_url("n3")], learner=True, wait=10)
    assert any(m.id == ghost.id and m.is_learner and not m.started for m in client.member_list())
    t0 = time.monotonic()
    with pytest.raises(LearnerNotReady):
        client.promote_when_ready(ghost.id, timeout=1.0)
    assert time.monotonic() - t0 < 5
    assert quorum_ok_after_remove(client.member_list(), ghost.id)
    client.member_remove(ghost.id, wait=10)
    assert ghost.id not in {m.id for m in client.member_list()}
    assert {m["name"] for m in etcdctl_members(c, "n1", "n2")} == {"n1", "n2"}
    with pytest.raises(MemberNotFound):
        client.member_remove(ghost.id)


@needs_etcd
@pytest.mark.processes
def test_client_certificate_from_another_ca_is_refused(cluster):
    c = cluster
    rogue = c.client("n1", cert=c.pki.rogue_client, timeout=2)
    t0 = time.monotonic()
    with pytest.raises(EtcdTLSError) as info:
        rogue.member_list()
    assert time.monotonic() - t0 < 3
    assert c.client_url("n1") in str(info.value) and "certificate" in str(info.value).lower()
    ok, detail = rogue.health()
    assert not ok and "TLS" in detail

    # and the other way round: a server not signed by the CA we trust
    distrust = EtcdClient(
        [c.client_url("n1")], str(c.pki.rogue_ca.ca_file), str(c.pki.client.cert_file),
        str(c.pki.client.key_file), timeout=2,
    )
    with pytest.raises(EtcdTLSError, match="(?i)certificate verify failed"):
        distrust.member_list()


def test_dead_endpoints_raise_unavailable_quickly(pki):
    address = ADDRESSES["n1"]
    refused_port = next(p for p in range(47000, 47100) if port_free(address, p))
    # a socket that listens but never answers: the TLS handshake times out
    with socket.socket() as silent:
        silent.bind((address, 0))
        silent.listen(8)
        silent_url = f"https://{address}:{silent.getsockname()[1]}"
        refused_url = f"https://{address}:{refused_port}"
        client = EtcdClient([refused_url, silent_url], str(pki.ca.ca_file), str(pki.client.cert_file),
                            str(pki.client.key_file), timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(EtcdUnavailable) as info:
            client.member_list()
        elapsed = time.monotonic() - t0
    assert elapsed < 3
    assert info.value.endpoints == [refused_url, silent_url]
    text = str(info.value)
    assert "connection refused" in text and "timed out" in text and not info.value.outcome_unknown
    ok, detail = client.health(refused_url)
    assert not ok and "connection refused" in detail


def test_request_sent_but_unanswered(pki):
    """A server that completes TLS, reads the request and never answers: a read may
    move on to the next endpoint, a membership change must not (it may have been
    applied) and says so."""

    address = ADDRESSES["n1"]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca.ca_file))
    ctx.load_cert_chain(str(pki.nodes["n1"].cert_file), str(pki.nodes["n1"].key_file))
    ctx.verify_mode = ssl.CERT_REQUIRED
    stop = threading.Event()
    held = []

    with socket.socket() as listener:
        listener.bind((address, 0))
        listener.listen(8)
        listener.settimeout(0.1)
        url = f"https://{address}:{listener.getsockname()[1]}"

        def serve():
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                try:
                    tls = ctx.wrap_socket(conn, server_side=True)
                    tls.settimeout(2)
                    tls.recv(65536)  # the request, then silence
                    held.append(tls)
                except OSError:
                    conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            client = EtcdClient([url, "https://127.0.0.11:1"], str(pki.ca.ca_file), str(pki.client.cert_file),
                                str(pki.client.key_file), timeout=0.5)
            t0 = time.monotonic()
            with pytest.raises(EtcdUnavailable) as info:
                client.member_add(["https://127.0.0.13:2380"])
            assert info.value.outcome_unknown and info.value.endpoints == [url]
            assert "unknown" in str(info.value)
            with pytest.raises(EtcdUnavailable) as info:
                client.member_list()  # a read: both endpoints tried
            assert not info.value.outcome_unknown and info.value.endpoints == [url, "https://127.0.0.11:1"]
            assert time.monotonic() - t0 < 5
        finally:
            stop.set()
            thread.join(5)
            for s in held:
                s.close()
