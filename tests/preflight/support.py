"""Real things for the preflight tests to probe: a local SNTP responder with a chosen
clock skew, a UDP socket that never answers, held and free ports, certificates."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pamportal.crypto.ca import self_signed_certificate
from pamportal.preflight.checks import PORT_ROLES, PreflightContext, Thresholds, unix_to_ntp
from tests.support.node import free_port  # noqa: F401  (re-exported to the preflight tests)


@contextmanager
def held_port(host: str = "127.0.0.1", port: int | None = None, *, listen: bool = True):
    """A TCP port this test holds (bound, and listening unless told otherwise)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port or 0))
        if listen:
            sock.listen(4)
        yield sock.getsockname()[1]
    finally:
        sock.close()


class SntpResponder:
    """Answers SNTP on 127.0.0.1:<free port> with its clock skewed by ``skew`` seconds."""

    def __init__(self, skew: float = 0.0, *, host: str = "127.0.0.1", leap: int = 0, stratum: int = 2):
        self.skew, self.leap, self.stratum = skew, leap, stratum
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sntp-responder", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            if len(data) < 48:
                continue
            self.requests += 1
            received = time.time() + self.skew
            reply = bytearray(48)
            reply[0] = (self.leap << 6) | (4 << 3) | 4  # version 4, mode 4 (server)
            reply[1] = self.stratum
            reply[2], reply[3] = 6, 0xEC
            reply[12:16] = b"LOCL"
            reply[16:24] = unix_to_ntp(received - 10)  # reference timestamp
            reply[24:32] = data[40:48]  # originate = the client's transmit timestamp
            reply[32:40] = unix_to_ntp(received)
            reply[40:48] = unix_to_ntp(time.time() + self.skew)
            self.sock.sendto(bytes(reply), peer)

    def __enter__(self) -> "SntpResponder":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@contextmanager
def silent_udp(host: str = "127.0.0.1"):
    """A bound UDP socket that reads nothing: datagrams to it vanish, nobody answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, 0))
        yield f"{host}:{sock.getsockname()[1]}"
    finally:
        sock.close()


def write_certificate(path: Path, *, days: int = 397, now: datetime | None = None) -> Path:
    cert_pem, _ = self_signed_certificate(["127.0.0.1"], days=days, now=now)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert_pem)
    return path


def expired_certificate(path: Path) -> Path:
    return write_certificate(path, days=10, now=datetime.now(timezone.utc) - timedelta(days=40))


LOW = Thresholds(min_cpus=1, min_memory_gib=0.01, min_disk_free_gib=0.001, ntp_warn_seconds=0.5,
                 ntp_error_seconds=1.0, cert_min_days=30, etcd_min_version="3.0.0", probe_timeout=0.5,
                 command_timeout=10.0)


def context(tmp_path: Path, *, ntp: tuple[str, ...] = (), postgres_port: int | None = None, **changes) -> PreflightContext:
    """A context where everything can pass on loopback: high free ports, low thresholds."""
    cert = tmp_path / "tls" / "node.crt"
    if not cert.exists():
        write_certificate(cert)
    values = dict(
        address="127.0.0.1",
        ports={p: free_port() for p in PORT_ROLES},
        ntp_servers=ntp,
        data_dir=str(tmp_path),
        certificate_path=str(cert),
        postgres_host="127.0.0.1" if postgres_port else "",
        postgres_port=postgres_port or 5432,
        thresholds=LOW,
    )
    values.update(changes)
    return PreflightContext(**values)
