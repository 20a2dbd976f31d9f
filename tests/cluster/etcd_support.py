"""Test helpers for etcd: a throwaway CA with node/client certificates, free ports,
starting and stopping member processes, and a client with what only tests ask of etcd
(the KV API, waiting for a learner to catch up and promoting it).

Deliberately independent of pamportal.crypto.ca (the real cluster CA).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pamportal.cluster.etcd import (
    EtcdClient,
    EtcdException,
    EtcdStatus,
    EtcdUnavailable,
    LearnerNotReady,
    Member,
    MemberNotLearner,
    UnhealthyCluster,
)
from pamportal.cluster.etcd_process import MemberConfig, command_line


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Issued:
    cert_file: Path
    key_file: Path


class ThrowawayCA:
    """A small ECDSA P-256 CA whose files live in ``directory``."""

    def __init__(self, directory: Path, name: str = "pamportal test etcd CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        now = datetime.now(timezone.utc)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._subject = subject
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = self.dir / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, label: str, names: list[str], *, server: bool = True, client: bool = True) -> Issued:
        """A leaf certificate for ``names`` (IP or DNS SANs). etcd uses one certificate
        for serving and for dialling its peers, so node certificates carry both
        serverAuth and clientAuth."""
        now = datetime.now(timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)]))
            .issuer_name(self._subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_file = self.dir / f"{label}.pem"
        key_file = self.dir / f"{label}-key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_key_pem(key))
        key_file.chmod(0o600)
        return Issued(cert_file, key_file)


def port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def pick_ports(address: str, preferred: tuple[int, ...] = (2379, 2380)) -> tuple[int, ...]:
    """The preferred ports on ``address`` when all are free, otherwise as many
    distinct free high ports chosen by the kernel."""
    if all(port_free(address, p) for p in preferred):
        return preferred
    socks = []
    try:
        for _ in preferred:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((address, 0))
            socks.append(s)
        return tuple(s.getsockname()[1] for s in socks)
    finally:
        for s in socks:
            s.close()


# --- member processes -----------------------------------------------------------------------
class EtcdStartError(RuntimeError):
    """The member process exited or did not become healthy in time."""


def start(cfg: MemberConfig, log_path: str | Path, *, binary: str | None = None) -> subprocess.Popen:
    """Start the member in its own process group, output appended to ``log_path``.
    The data dir is created 0700 (etcd insists on it)."""
    argv = command_line(cfg, binary=binary)
    data_dir = Path(cfg.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}  # flags only
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env, close_fds=True,
        )


def stop(proc: subprocess.Popen, *, timeout: float = 10.0) -> int | None:
    """SIGTERM the member's process group, SIGKILL after ``timeout``. Returns the exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=timeout)
    return proc.returncode


def wait_healthy(
    client: EtcdClient,
    timeout: float = 30.0,
    *,
    endpoint: str | None = None,
    proc: subprocess.Popen | None = None,
    interval: float = 0.2,
) -> EtcdStatus:
    """Wait (at most ``timeout`` seconds) until ``endpoint`` answers ``/health`` with
    true and reports a leader; returns its status. Raises :class:`EtcdStartError`
    if ``proc`` exits or time runs out, with the last reason."""
    deadline = time.monotonic() + timeout
    last = "not tried"
    while True:
        if proc is not None and proc.poll() is not None:
            raise EtcdStartError(f"etcd exited with code {proc.returncode} before becoming healthy ({last})")
        ok, detail = client.health(endpoint)
        last = detail
        if ok:
            try:
                st = client.status(endpoint)
            except EtcdException as exc:
                last = str(exc)
            else:
                if st.leader:
                    return st
                last = "no leader yet"
        if time.monotonic() + interval > deadline:
            raise EtcdStartError(f"etcd at {endpoint or client.endpoints[0]} not healthy after {timeout:g}s: {last}")
        time.sleep(interval)


# --- a client with the test-only requests ------------------------------------------------------
def _b64(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def _prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix"."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"  # the whole key space


class EtcdTestClient(EtcdClient):
    """``EtcdClient`` plus the KV API (keys and values are base64 on the gateway) and
    the learner helpers the process tests and the join benchmark use."""

    def promote_when_ready(self, member_id: int, *, timeout: float = 30.0, interval: float = 0.25) -> list[Member]:
        """Promote, retrying on :class:`LearnerNotReady` until ``timeout`` seconds.

        A promote that timed out after being sent may have succeeded: if the member
        is already a voter we return the member list instead of failing.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.member_promote(member_id)
            except MemberNotLearner:
                return self.member_list()
            except (LearnerNotReady, UnhealthyCluster, EtcdUnavailable) as exc:
                if time.monotonic() + interval > deadline:
                    raise exc
            time.sleep(interval)

    def learner_in_sync(self, learner_endpoint: str, *, slack: int = 0) -> bool:
        """True when the learner's applied raft index has reached the leader's raft
        index (within ``slack``). etcd's own promote check is looser (90 %)."""
        mine = self.status(learner_endpoint)
        leader_status = None
        for ep in self.endpoints:
            if ep.rstrip("/") == learner_endpoint.rstrip("/"):
                continue
            try:
                st = self.status(ep)
            except EtcdException:
                continue
            if st.is_leader:
                leader_status = st
                break
            leader_status = leader_status or st
        if leader_status is None:
            return False
        return mine.raft_applied_index + slack >= leader_status.raft_index

    def put(self, key: str | bytes, value: str | bytes) -> int:
        """Store a value; returns the new revision."""
        data = self._call("POST", "/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
        return int((data.get("header") or {}).get("revision", 0))

    def get(self, key: str | bytes) -> bytes | None:
        data = self._call("POST", "/v3/kv/range", {"key": _b64(key)})
        kvs = data.get("kvs") or []
        return _unb64(kvs[0].get("value")) if kvs else None

    def get_prefix(self, prefix: str | bytes) -> dict[bytes, bytes]:
        raw = prefix.encode() if isinstance(prefix, str) else prefix
        data = self._call("POST", "/v3/kv/range", {"key": _b64(raw), "range_end": _b64(_prefix_end(raw))})
        return {_unb64(kv.get("key")): _unb64(kv.get("value")) for kv in data.get("kvs") or []}

    def delete(self, key: str | bytes) -> int:
        """Delete one key; returns how many keys were deleted (0 or 1)."""
        data = self._call("POST", "/v3/kv/deleterange", {"key": _b64(key)})
        return int(data.get("deleted", 0) or 0)
