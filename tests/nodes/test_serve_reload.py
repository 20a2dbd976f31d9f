"""`manage.py serve` switches the HTTPS console to a replaced certificate, for real:
the served certificate is read off the TLS handshake before and after."""

from __future__ import annotations

import hashlib
import socket
import ssl
from pathlib import Path

import pytest

from pamportal.crypto import ca
from pamportal.nodes import services as node_services
from tests.support.node import start_node, wait_for

pytestmark = pytest.mark.processes


def served_certificate_sha256(host: str, port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def test_replacing_the_certificate_file_switches_the_served_certificate(node_env, settings):
    base = start_node(node_env)
    host, port = base.removeprefix("https://").rsplit(":", 1)
    port = int(port)
    cert_path = Path(node_env.data_dir) / "tls" / "node.crt"
    before = served_certificate_sha256(host, port)
    assert before == ca.certificate_info(cert_path.read_bytes()).sha256

    authority = ca.create_ca(name="test cluster CA")
    issued = ca.issue_node_certificate(ca_cert_pem=authority.cert_pem, ca_key_pem=authority.key_pem, names=[host, "localhost"])
    settings.PAM_TLS_CERT = cert_path
    settings.PAM_TLS_KEY = cert_path.with_name("node.key")
    node_services.node_tls_files_write(cert_pem=issued.cert_pem, key_pem=issued.key_pem, ca_cert_pem=authority.cert_pem)
    expected = ca.certificate_info(issued.cert_pem).sha256

    def switched():
        try:
            return served_certificate_sha256(host, port) == expected
        except OSError:
            return False

    wait_for(switched, timeout=30, interval=0.5, what="the console to serve the new certificate")
    # gunicorn's gthread workers read the files per connection already; the reload
    # makes every worker class (and anything gunicorn caches) start afresh.
    wait_for(lambda: "reloading the listeners (SIGHUP to gunicorn)" in node_env.log("serve"), timeout=15,
             what="serve to reload gunicorn")
    wait_for(lambda: "handling signal: hup" in node_env.log("serve").lower(),
             timeout=15, what="gunicorn to handle SIGHUP")
    wait_for(switched, timeout=30, interval=0.5, what="the reloaded console to serve the new certificate")
    # The new certificate verifies against the CA; the console keeps answering.
    context = ssl.create_default_context(cadata=authority.cert_pem.decode())
    with socket.create_connection((host, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            assert tls.version()
    assert (cert_path.with_name("node.key").stat().st_mode & 0o777) == 0o600
