"""A small client for Patroni's REST API (port 8008): HTTPS with the node's client
certificate, checking the member's certificate against the cluster CA, as the etcd
client does (pamportal.cluster.etcd: the standard library only, never a proxy).

Reads: ``cluster()`` (GET /cluster: every member's role, state, timeline, lag) and
``patroni()`` (GET /patroni: this member's PostgreSQL, its replication connections).
Writes: ``switchover()`` and ``failover()``, which Patroni carries out and waits for
(up to about 20 s) before it answers; the answer is Patroni's own sentence.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Patroni answers a switchover once it has happened, polling for up to 20 s.
ACTION_TIMEOUT = 40.0


class PatroniAPIError(Exception):
    """Anything that went wrong talking to a member's REST API. ``url`` is what was
    asked, ``reason`` why it failed."""

    def __init__(self, url: str, reason: str):
        self.url = url
        self.reason = reason
        super().__init__(f"Patroni at {url}: {reason}")


class PatroniUnavailable(PatroniAPIError):
    """No answer: refused, timed out, reset. The member may be down."""


class PatroniTLSError(PatroniAPIError):
    """The TLS handshake failed: a member certificate not from the cluster CA, a name
    mismatch, or our client certificate refused. Retrying will not help."""


class PatroniRefused(PatroniAPIError):
    """Patroni answered with an error status, e.g. 412 "candidate name does not match
    with sync_standby" or 503 "Switchover failed". ``status`` is the HTTP status."""

    def __init__(self, url: str, status: int, reason: str):
        self.status = status
        super().__init__(url, f"HTTP {status}: {reason}")


@dataclass(frozen=True)
class ClusterMember:
    """One member as GET /cluster describes it. ``role`` is ``leader``,
    ``sync_standby`` or ``replica``; ``state`` e.g. ``running`` or ``streaming``;
    ``lag`` in bytes behind the leader (None on the leader, or when unknown)."""

    name: str
    role: str
    state: str
    api_url: str
    host: str = ""
    port: int | None = None
    timeline: int | None = None
    lag: int | None = None
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def is_leader(self) -> bool:
        return self.role in ("leader", "standby_leader")

    @property
    def is_sync_standby(self) -> bool:
        return self.role in ("sync_standby", "quorum_standby")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterMember:
        lag = data.get("lag")
        return cls(
            name=str(data.get("name", "")),
            role=str(data.get("role", "")),
            state=str(data.get("state", "")),
            api_url=str(data.get("api_url", "")),
            host=str(data.get("host", "")),
            port=int(data["port"]) if data.get("port") is not None else None,
            timeline=int(data["timeline"]) if data.get("timeline") is not None else None,
            lag=int(lag) if isinstance(lag, int) else None,
            tags=dict(data.get("tags") or {}),
        )


@dataclass(frozen=True)
class ClusterView:
    members: tuple[ClusterMember, ...]
    paused: bool = False

    @property
    def leader(self) -> ClusterMember | None:
        return next((m for m in self.members if m.is_leader), None)

    @property
    def sync_standbys(self) -> tuple[ClusterMember, ...]:
        return tuple(m for m in self.members if m.is_sync_standby)

    def member(self, name: str) -> ClusterMember | None:
        return next((m for m in self.members if m.name == name), None)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterView:
        return cls(members=tuple(ClusterMember.from_json(m) for m in data.get("members") or []),
                   paused=bool(data.get("pause")))


@dataclass(frozen=True)
class ReplicationConnection:
    """A standby streaming from this member (pg_stat_replication, as Patroni shows it)."""

    application_name: str
    state: str
    sync_state: str
    client_addr: str = ""
    usename: str = ""


@dataclass(frozen=True)
class MemberStatus:
    """GET /patroni: this member's PostgreSQL. ``role`` is ``primary`` or ``replica``
    (PostgreSQL's view); ``sync_standby`` whether Patroni has made it the synchronous
    standby."""

    name: str
    state: str
    role: str
    timeline: int | None
    server_version: int | None
    sync_standby: bool
    replication: tuple[ReplicationConnection, ...]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemberStatus:
        patroni = data.get("patroni") or {}
        return cls(
            name=str(patroni.get("name", "")),
            state=str(data.get("state", "")),
            role=str(data.get("role", "")),
            timeline=int(data["timeline"]) if data.get("timeline") is not None else None,
            server_version=int(data["server_version"]) if data.get("server_version") is not None else None,
            sync_standby=bool(data.get("sync_standby")),
            replication=tuple(
                ReplicationConnection(
                    application_name=str(r.get("application_name", "")), state=str(r.get("state", "")),
                    sync_state=str(r.get("sync_state", "")), client_addr=str(r.get("client_addr") or ""),
                    usename=str(r.get("usename", "")),
                )
                for r in data.get("replication") or []
            ),
            raw=data,
        )


def _tls_failure(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    return isinstance(exc, (ssl.SSLError, ssl.CertificateError))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    return f"{type(exc).__name__}: {exc}"


class PatroniClient:
    """One member's REST API. ``api_url`` is ``https://<address>:8008``; the
    certificate and key are the node's own (the API requires a cluster-CA client
    certificate), the CA file the cluster CA."""

    def __init__(self, api_url: str, *, ca_file: Path | str, cert_file: Path | str | None,
                 key_file: Path | str | None, timeout: float = 5.0):
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
        if cert_file:
            ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        self._ssl = ctx
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=ctx),
            urllib.request.ProxyHandler({}),  # never send cluster traffic through a proxy
        )

    def __repr__(self) -> str:
        return f"PatroniClient({self.api_url!r})"

    def _call(self, method: str, path: str, body: dict | None = None, *, timeout: float | None = None) -> tuple[int, bytes]:
        url = self.api_url + path
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=timeout or self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace").strip()
            try:
                parsed = json.loads(text)
                if isinstance(parsed, dict) and parsed:
                    return exc.code, text.encode()  # /cluster and /patroni answer 503 with a body
            except ValueError:
                pass
            raise PatroniRefused(url, exc.code, text or exc.reason) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, socket.timeout) as exc:
            if _tls_failure(exc):
                raise PatroniTLSError(url, _reason(exc)) from exc
            raise PatroniUnavailable(url, _reason(exc)) from exc

    def _json(self, path: str) -> dict[str, Any]:
        status, raw = self._call("GET", path)
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise PatroniAPIError(self.api_url + path, f"HTTP {status} with a body that is not JSON") from exc
        if not isinstance(data, dict):
            raise PatroniAPIError(self.api_url + path, "the answer is not a JSON object")
        return data

    def cluster(self) -> ClusterView:
        """Every member as Patroni sees them through etcd (whichever member is asked)."""
        return ClusterView.from_json(self._json("/cluster"))

    def patroni(self) -> MemberStatus:
        """This member. Answers even when PostgreSQL is down (HTTP 503 with a body)."""
        return MemberStatus.from_json(self._json("/patroni"))

    def _action(self, path: str, body: dict[str, Any]) -> str:
        status, raw = self._call("POST", path, body, timeout=ACTION_TIMEOUT)
        text = raw.decode("utf-8", "replace").strip()
        if status >= 300:
            raise PatroniRefused(self.api_url + path, status, text)
        return text

    def switchover(self, *, leader: str, candidate: str | None = None) -> str:
        """Move the lead from ``leader`` (who must lead now) to ``candidate`` (with
        synchronous replication, only the sync standby qualifies) or to the best
        member. Returns Patroni's answer, e.g. 'Successfully switched over to "n2"'."""
        body: dict[str, Any] = {"leader": leader}
        if candidate:
            body["candidate"] = candidate
        return self._action("/switchover", body)

    def failover(self, *, candidate: str) -> str:
        """Promote ``candidate`` whether or not the leader is reachable: for a leader
        that is gone. Patroni still refuses a candidate that is not the sync standby,
        so nothing acknowledged is lost."""
        return self._action("/failover", {"candidate": candidate})
