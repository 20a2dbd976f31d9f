"""Process hardening of a node, for real where it matters: owner-only files in the data
dir (umask 077 and tightening at start), no shared gunicorn control socket, and TLS
(AEAD suites only on TLS 1.2, the chain once the cluster CA exists, no Server banner)."""

from __future__ import annotations

import http.client
import socket
import ssl
import stat
from pathlib import Path

import pytest

from pamportal.core.management.commands import serve
from tests.support.node import free_port, start_node, wait_for

CBC_ONLY = "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES256-SHA"
AEAD_ONLY = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"


def loose_paths(root: Path) -> list[str]:
    """Everything under ``root`` (itself included) with a group or other bit."""
    found = []
    for path in [root, *root.rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:  # a running node removed it meanwhile (SQLite's -wal, a temp file)
            continue
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.S_IMODE(mode):o}")
    return found


def tls12_client(ciphers: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    return context


def handshake(host: str, port: int, context: ssl.SSLContext) -> tuple[str, str, int]:
    """(TLS version, cipher, number of certificates the server presented)."""
    with socket.create_connection((host, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            chain = tls.get_unverified_chain() if hasattr(tls, "get_unverified_chain") else tls._sslobj.get_unverified_chain()
            return tls.version(), tls.cipher()[0], len(chain or [])


def response_headers(host: str, port: int, path: str) -> tuple[int, dict[str, str]]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(host, port, timeout=5, context=context)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


# -- without processes ------------------------------------------------------------------

def test_every_listener_command_line_is_hardened(settings, tmp_path):
    settings.PAM_TLS_CERT = tmp_path / "node.crt"
    settings.PAM_TLS_KEY = tmp_path / "node.key"
    command = serve.Command()
    listeners = {
        "console": command._gunicorn(settings.PAM_HTTPS_PORT, 2),
        "setup-api": command._gunicorn(settings.PAM_SETUP_API_PORT, 1),
        "delegation": command._gunicorn(settings.PAM_DELEGATION_API_PORT, 1, "--cert-reqs", "2", "--ca-certs", "x"),
    }
    for name, argv in listeners.items():
        assert "--no-control-socket" in argv, name
        assert argv[argv.index("--ciphers") + 1] == serve.TLS12_CIPHERS, name
        assert Path(argv[argv.index("--config") + 1]) == serve.GUNICORN_CONFIG, name
        assert argv[argv.index("--umask") + 1] == "0o077", name
    assert serve.GUNICORN_CONFIG.is_file()


def test_the_tls12_cipher_list_is_ecdhe_with_aead_only():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers(serve.TLS12_CIPHERS)
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12, "no TLS 1.2 suite left"
    for cipher in tls12:
        assert cipher["aead"], cipher["name"]
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]
    names = {c["name"] for c in tls12}
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" in names and "ECDHE-ECDSA-CHACHA20-POLY1305" in names
    assert not names & set(CBC_ONLY.split(":"))


def test_tighten_data_dir_strips_group_and_other_bits_and_leaves_links(tmp_path):
    root = tmp_path / "data"
    (root / "logs").mkdir(parents=True)
    (root / "pamportal.sqlite3").write_text("x")
    (root / "logs" / "pamportal.log").write_text("x")
    (root / "run.sh").write_text("x")
    outside = tmp_path / "outside"
    outside.write_text("x")
    outside.chmod(0o644)
    (root / "link").symlink_to(outside)
    for path, mode in ((root, 0o755), (root / "logs", 0o775), (root / "pamportal.sqlite3", 0o644),
                       (root / "logs" / "pamportal.log", 0o666), (root / "run.sh", 0o755)):
        path.chmod(mode)

    assert serve.tighten_data_dir(root) == []
    assert loose_paths(root) == []
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "logs").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "run.sh").stat().st_mode) == 0o700  # owner's bits kept
    assert stat.S_IMODE((root / "pamportal.sqlite3").stat().st_mode) == 0o600
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # a link is not followed


# -- a real node ------------------------------------------------------------------------

@pytest.mark.processes
def test_a_started_node_leaves_nothing_readable_by_others_and_no_home_control_socket(node_env, tmp_path):
    data = node_env.data_dir
    home = tmp_path / "home"
    home.mkdir()
    node_env.env["HOME"] = str(home)
    node_env.env.pop("XDG_RUNTIME_DIR", None)
    # A data dir an installer created with the usual 0755, with files from before.
    (data / "logs").mkdir()
    (data / "etcd").mkdir()
    (data / "etcd" / "member.json").write_text("")  # unreadable as a member: no etcd
    (data / "logs" / "old.log").write_text("from an earlier version\n")
    for path, mode in ((data, 0o755), (data / "logs", 0o755), (data / "etcd", 0o755),
                       (data / "etcd" / "member.json", 0o644), (data / "logs" / "old.log", 0o644)):
        path.chmod(mode)

    base = start_node(node_env, host="127.0.0.31")
    # The worker with its beat has written its schedule; the console has served a page
    # (a session and the database in use).
    wait_for(lambda: list(data.glob("celerybeat-schedule*")), timeout=60, what="the beat schedule file")
    host, port = base.removeprefix("https://").rsplit(":", 1)
    assert response_headers(host, int(port), "/setup/")[0] < 500
    # The embedded default keeps its database here; with PostgreSQL there is none.
    assert (data / "pamportal.sqlite3").exists() is ("DATABASE_URL" not in node_env.env)
    assert list((data / "logs").iterdir())

    assert loose_paths(data) == []
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert not (home / ".gunicorn").exists()
    node_env.stop()
    assert loose_paths(data) == []
    assert not (home / ".gunicorn").exists(), "a gunicorn master made a control socket under $HOME"


@pytest.mark.processes
def test_every_listener_offers_aead_only_serves_the_chain_and_no_server_banner(node_env, settings):
    from pamportal.crypto import ca
    from pamportal.nodes import services as node_services

    host = "127.0.0.32"
    setup_port = free_port(host)
    node_env.env.update(PAM_SETUP_API_PORT=str(setup_port), PAM_DELEGATION_API_PORT=str(free_port(host)))
    base = start_node(node_env, host=host)
    port = int(base.rsplit(":", 1)[1])

    # TLS 1.2: a client offering only CBC suites is refused; an AEAD one gets in.
    with pytest.raises(ssl.SSLError):
        handshake(host, port, tls12_client(CBC_ONLY))
    version, cipher, presented = handshake(host, port, tls12_client(AEAD_ONLY))
    assert (version, cipher) in {("TLSv1.2", c) for c in AEAD_ONLY.split(":")}
    assert presented == 1  # before setup: the self-signed certificate alone
    status, headers = response_headers(host, port, "/healthz")
    assert status == 200 and "server" not in headers, headers

    # Setup finalised: the node's certificate from the cluster CA, the CA beside it.
    cert_path = Path(node_env.data_dir) / "tls" / "node.crt"
    authority = ca.create_ca(name="test cluster CA")
    issued = ca.issue_node_certificate(ca_cert_pem=authority.cert_pem, ca_key_pem=authority.key_pem,
                                       names=[host, "localhost"])
    settings.PAM_TLS_CERT = cert_path
    settings.PAM_TLS_KEY = cert_path.with_name("node.key")
    node_services.node_tls_files_write(cert_pem=issued.cert_pem, key_pem=issued.key_pem,
                                       ca_cert_pem=authority.cert_pem)

    def chain_length(listener_port: int) -> int:
        try:
            return handshake(host, listener_port, tls12_client(AEAD_ONLY))[2]
        except OSError:
            return 0

    # The console presents leaf and CA; so does the setup API (2390) once serve starts it.
    wait_for(lambda: chain_length(port) == 2, timeout=30, interval=0.5, what="the console to serve the chain")
    wait_for(lambda: chain_length(setup_port) == 2, timeout=30, interval=0.5, what="the setup API to serve the chain")
    verified = ssl.create_default_context(cadata=authority.cert_pem.decode())
    verified.check_hostname = False
    with socket.create_connection((host, port), timeout=5) as raw:
        with verified.wrap_socket(raw, server_hostname=host) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLError):
        handshake(host, setup_port, tls12_client(CBC_ONLY))
    status, headers = response_headers(host, setup_port, "/")
    assert status == 404 and "server" not in headers, headers
    status, headers = response_headers(host, port, "/healthz")
    assert status == 200 and "server" not in headers, headers
