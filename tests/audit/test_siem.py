"""SIEM forwarding to a real TLS syslog receiver on 127.0.0.1: a collector that was down
gets every event it missed, once and in order, when it is back."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pamportal.audit.models import AuditEvent, SiemCollector
from pamportal.audit.siem import frame, siem_configure, siem_forward, syslog_message
from tests.support.node import wait_for

from .reports import make_trail

pytestmark = pytest.mark.django_db


def make_pki(tmp_path):
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test syslog CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca.public_bytes(serialization.Encoding.PEM).decode(), cert_path, key_path


class SyslogReceiver:
    """An RFC 5425 receiver: TLS, octet-counted frames, one thread, bounded waits."""

    def __init__(self, cert_path, key_path, port: int = 0):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_path, key_path)
        self.messages: list[bytes] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopping.is_set():
            try:
                raw, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            raw.settimeout(5)
            try:
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    self.read_frames(conn)
            except (OSError, ssl.SSLError):
                pass

    def read_frames(self, conn):
        buffer = b""
        while not self.stopping.is_set():
            chunk = conn.recv(65536)
            if not chunk:
                return
            buffer += chunk
            while True:
                space = buffer.find(b" ")
                if space <= 0:
                    break
                length = int(buffer[:space])
                if len(buffer) < space + 1 + length:
                    break
                self.messages.append(buffer[space + 1: space + 1 + length])
                buffer = buffer[space + 1 + length:]

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=10)
        self.sock.close()
        assert not self.thread.is_alive()

    def positions(self) -> list[int]:
        return [int(re.search(rb' position="(\d+)"', m).group(1)) for m in self.messages]


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


def test_message_is_rfc5424_with_octet_counting():
    make_trail(1)
    event = AuditEvent.objects.get(position=1)
    message = syslog_message(event, hostname="node-1.example", sd_id="pamportal@32473")
    assert re.match(rb"<1(09|08)>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z node-1\.example pamportal - auth\.login \[pamportal@32473 position=\"1\"", message)
    assert b"\xef\xbb\xbf{" in message and event.hash.encode() in message
    assert frame(message) == str(len(message)).encode() + b" " + message


def test_a_collector_that_was_down_gets_every_missed_event_once_in_order(pki):
    ca_pem, cert_path, key_path = pki
    receiver = SyslogReceiver(cert_path, key_path)
    port = receiver.port
    try:
        make_trail(5)
        siem_configure(host="127.0.0.1", port=port, ca_pem=ca_pem, enabled=True)
        first = siem_forward()
        assert "error" not in first, first
        head = AuditEvent.objects.order_by("-position").values_list("position", flat=True).first()
        assert first["cursor"] == head
        wait_for(lambda: len(receiver.messages) >= head)
    finally:
        receiver.stop()
    assert receiver.positions() == list(range(1, head + 1))

    make_trail(100)  # the collector is down
    down = siem_forward()
    collector = SiemCollector.objects.get()
    assert down["sent"] == 0 and "error" in down
    assert collector.cursor == head and collector.last_error and collector.last_error_at

    receiver = SyslogReceiver(cert_path, key_path, port=port)
    try:
        for _ in range(10):  # bounded: 100 events at 500 a batch take one run
            outcome = siem_forward()
            if outcome.get("sent", 0) == 0 and "error" not in outcome:
                break
        wait_for(lambda: len(receiver.messages) >= 100)
    finally:
        receiver.stop()
    assert receiver.positions() == list(range(head + 1, head + 101))
    collector.refresh_from_db()
    assert collector.cursor == head + 100 and collector.last_error == "" and collector.last_success_at


def test_a_collector_with_an_untrusted_certificate_gets_nothing(pki, tmp_path):
    _, cert_path, key_path = pki
    other_ca, _, _ = make_pki(tmp_path / "other") if (tmp_path / "other").mkdir() is None else None
    receiver = SyslogReceiver(cert_path, key_path)
    try:
        make_trail(3)
        siem_configure(host="127.0.0.1", port=receiver.port, ca_pem=other_ca, enabled=True)
        outcome = siem_forward()
    finally:
        receiver.stop()
    assert outcome["sent"] == 0 and "CERTIFICATE_VERIFY_FAILED" in outcome["error"]
    assert receiver.messages == [] and SiemCollector.objects.get().cursor == 0


def test_disabled_forwarding_sends_nothing():
    make_trail(2)
    assert siem_forward() == {"sent": 0, "skipped": "not configured"}
