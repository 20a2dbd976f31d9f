"""How the leader reaches the cluster: its etcd client, etcd's members found by id or
address, and the followers' delegation API (the heartbeat, the removal notice).

``etcd_client`` is the one place an ``EtcdClient`` is made, so tests replace it with an
in-memory fake (``monkeypatch.setattr(connections, "etcd_client", ...)``).
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from django.conf import settings

from pamportal.nodes.selectors import node_address
from pamportal.nodes.services import ca_cert_path

from . import conf
from .etcd import EtcdClient, Member
from .etcd_process import client_url, peer_url


def tls_files() -> tuple[str, str, str]:
    """(CA file, node certificate, node key) as the console serves them."""
    return str(ca_cert_path()), str(settings.PAM_TLS_CERT), str(settings.PAM_TLS_KEY)


def leader_client_url() -> str:
    return client_url(node_address(), conf.etcd_client_port())


def etcd_client(*, timeout: float | None = None) -> EtcdClient:
    """A client of this node's etcd member (the leader's)."""
    ca_file, cert_file, key_file = tls_files()
    return EtcdClient([leader_client_url()], ca_file, cert_file, key_file,
                      timeout=conf.etcd_timeout() if timeout is None else timeout)


def member_peer_url(address: str) -> str:
    return peer_url(address, conf.etcd_peer_port())


def member_client_url(address: str) -> str:
    return client_url(address, conf.etcd_client_port())


def find_member(members: list[Member], *, member_id: str | int | None = None, address: str | None = None) -> Member | None:
    """The member with this id, else the one whose peer URL is this address's."""
    if member_id not in (None, ""):
        for m in members:
            if m.id == int(member_id):
                return m
    if address:
        url = member_peer_url(address)
        for m in members:
            if url in m.peer_urls:
                return m
    return None


@dataclass(frozen=True)
class HeartbeatResult:
    ok: bool
    detail: str
    seconds: float
    data: dict


def _delegation_opener():
    ca_file, cert_file, key_file = tls_files()
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.load_cert_chain(cert_file, key_file)
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), urllib.request.ProxyHandler({}))


def delegation_url(address: str, path: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}:{conf.delegation_api_port()}/api/delegation/v1/{path}"


@dataclass(frozen=True)
class DelegationAnswer:
    """What a node's delegation API answered: ``status`` 0 when it was not reached."""

    status: int
    data: dict
    detail: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and self.data.get("ok") is True


def delegation_post(address: str, path: str, payload: dict) -> DelegationAnswer:
    """``POST https://<address>:2391/api/delegation/v1/<path>`` with JSON, this node's
    certificate as the client certificate, the peer checked against the cluster CA."""
    url = delegation_url(address, path)
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with _delegation_opener().open(request, timeout=conf.heartbeat_timeout()) as response:
            status, raw = response.status, response.read(64 * 1024)
    except urllib.error.HTTPError as exc:
        with exc:
            status, raw = exc.code, exc.read(64 * 1024)
    except (OSError, ValueError, ssl.SSLError) as exc:
        return DelegationAnswer(0, {}, f"{url}: {getattr(exc, 'reason', exc)}"[:480])
    try:
        data = json.loads(raw)
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    error = data.get("error") if isinstance(data.get("error"), dict) else {}
    detail = f"HTTP {status}" + (f" {error.get('code')}: {error.get('message')}" if error else "")
    return DelegationAnswer(status, data, detail[:480])


def delegation_heartbeat(member) -> HeartbeatResult:
    """``GET https://<address>:2391/api/delegation/v1/heartbeat`` with this node's
    certificate as the client certificate, the peer checked against the cluster CA."""
    ca_file, cert_file, key_file = tls_files()
    port = conf.delegation_api_port()
    host = f"[{member.address}]" if ":" in member.address else member.address
    url = f"https://{host}:{port}/api/delegation/v1/heartbeat"
    started = time.monotonic()
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        context.load_cert_chain(cert_file, key_file)
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                             urllib.request.ProxyHandler({}))
        with opener.open(urllib.request.Request(url, method="GET"), timeout=conf.heartbeat_timeout()) as response:
            raw = response.read(64 * 1024)
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("status") != "ok":
            return HeartbeatResult(False, "the node answered, but not with a heartbeat", time.monotonic() - started,
                                   data if isinstance(data, dict) else {})
        return HeartbeatResult(True, f"answered in {1000 * (time.monotonic() - started):.0f} ms",
                               time.monotonic() - started, data)
    except urllib.error.HTTPError as exc:
        return HeartbeatResult(False, f"HTTP {exc.code} from {url}", time.monotonic() - started, {})
    except (OSError, ValueError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", exc)
        return HeartbeatResult(False, f"{url}: {reason}"[:480], time.monotonic() - started, {})
