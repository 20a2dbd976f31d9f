"""A small client for etcd's v3 JSON gateway (HTTPS with a client certificate).

pamportal talks to etcd (Debian's ``etcd-server``, 3.4) through the grpc-gateway that
etcd serves on its client port: ``POST /v3/cluster/member/add`` and friends, plus
``GET /health``. Only the standard library is used.

Gateway facts worth knowing (etcd 3.4):

* 64-bit numbers (member ids, revisions, raft indexes) are JSON *decimal strings*;
  ``etcdctl`` shows member ids in hex. :func:`parse_member_id` /
  :func:`format_member_id` convert.
* Fields with their zero value are left out: a voting member has no ``isLearner``,
  a member that has not started yet has no ``name`` and no ``clientURLs``.
* Errors come back as a non-2xx answer with ``{"error": ..., "message": ...,
  "code": <grpc code>}``.
* A learner refuses most client requests ("rpc not supported for learner"), so do
  not list a learner's client URL first; ``status`` and ``health`` work on it.
* etcd 3.4 allows at most one learner at a time ("too many learner members in
  cluster").

Endpoints are tried in order. A failure *before* the request was sent (connection
refused, connect or TLS-handshake timeout) moves on to the next endpoint. A failure
*after* it was sent (read timeout, reset) moves on only for requests that are safe to
repeat (reads); for a membership change it raises :class:`EtcdUnavailable` with
``outcome_unknown=True`` because the change may have been applied.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------------
# Exceptions


class EtcdException(Exception):
    """Base class of everything this module raises about etcd."""


class EtcdUnavailable(EtcdException):
    """No endpoint answered (refused, timed out, reset). ``attempts`` lists
    ``(endpoint, reason)`` for each endpoint tried."""

    def __init__(self, attempts: list[tuple[str, str]], *, outcome_unknown: bool = False):
        self.attempts = attempts
        self.endpoints = [e for e, _ in attempts]
        self.outcome_unknown = outcome_unknown
        tried = "; ".join(f"{e}: {r}" for e, r in attempts) or "no endpoints configured"
        prefix = "etcd unavailable"
        if outcome_unknown:
            prefix += " (the request was sent; whether it was applied is unknown)"
        super().__init__(f"{prefix} — tried {tried}")


class EtcdTLSError(EtcdException):
    """The TLS handshake failed or the peer refused our certificate: wrong CA,
    a client certificate not signed by the cluster CA, a name mismatch, an expired
    certificate. Retrying will not help; the certificates must be fixed."""

    def __init__(self, attempts: list[tuple[str, str]]):
        self.attempts = attempts
        self.endpoints = [e for e, _ in attempts]
        tried = "; ".join(f"{e}: {r}" for e, r in attempts)
        super().__init__(f"etcd TLS failure (check the cluster CA and the client certificate) — {tried}")


class EtcdError(EtcdException):
    """etcd answered with an error. ``code`` is the gRPC status code (or the HTTP
    status when the body carried none), ``message`` etcd's text."""

    def __init__(self, code: int, message: str, *, http_status: int | None = None, endpoint: str | None = None):
        self.code = code
        self.message = message
        self.http_status = http_status
        self.endpoint = endpoint
        super().__init__(f"etcd error {code}: {message}")


class LearnerNotReady(EtcdError):
    """Promote refused: the learner has not caught up with the leader yet (retry)."""


class MemberNotLearner(EtcdError):
    """Promote refused: the member is already a voting member."""


class MemberNotFound(EtcdError):
    """The member id is not (or no longer) in the cluster."""


class TooManyLearners(EtcdError):
    """etcd 3.4 allows a single learner at a time."""


class PeerURLExists(EtcdError):
    """member add refused: a member with that peer URL already exists."""


class NotEnoughStartedMembers(EtcdError):
    """etcd's own strict reconfiguration check refused a change that could lose quorum."""


class UnhealthyCluster(EtcdError):
    """etcd refused a membership change because not every voting member has been
    connected for its health interval (5 s) — e.g. right after a promote or a
    restart. A definite refusal: safe to retry a few seconds later."""


class LearnerRPCUnsupported(EtcdError):
    """The endpoint is a learner, which serves only status/health-like requests."""


# etcd 3.4's own texts (api/v3rpc/rpctypes), as the gateway returns them -> exception
# class. Matched case-sensitively as whole texts; checked in this order, so a text that
# contains another (the learner "in sync" one) is tried first.
_ERROR_CLASSES: list[tuple[str, type[EtcdError]]] = [
    ("etcdserver: can only promote a learner member which is in sync with leader", LearnerNotReady),
    ("etcdserver: can only promote a learner member", MemberNotLearner),
    ("etcdserver: member not found", MemberNotFound),
    ("membership: ID not found", MemberNotFound),
    ("etcdserver: too many learner members in cluster", TooManyLearners),
    ("etcdserver: Peer URLs already exists", PeerURLExists),
    ("etcdserver: re-configuration failed due to not enough started members", NotEnoughStartedMembers),
    ("etcdserver: unhealthy cluster", UnhealthyCluster),
    ("etcdserver: rpc not supported for learner", LearnerRPCUnsupported),
]


def _error_class(message: str) -> type[EtcdError]:
    for text, candidate in _ERROR_CLASSES:
        if message == text or message.endswith(text):
            return candidate
    return EtcdError


def _error_from_body(status: int, body: bytes, endpoint: str) -> EtcdError:
    message = body.decode("utf-8", "replace").strip()
    code = status
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        message = str(data.get("message") or data.get("error") or message)
        if isinstance(data.get("code"), int):
            code = data["code"]
    return _error_class(message.strip())(code, message, http_status=status, endpoint=endpoint)


# ---------------------------------------------------------------------------------
# Values


def parse_member_id(value: str | int) -> int:
    """A member id from the gateway (decimal string) or an int. For etcdctl's hex
    form use :func:`member_id_from_hex`."""
    if isinstance(value, bool):
        raise TypeError("a member id is not a bool")
    if isinstance(value, int):
        member_id = value
    else:
        member_id = int(str(value), 10)
    if not 0 <= member_id < 2**64:
        raise ValueError(f"member id out of range: {value!r}")
    return member_id


def member_id_to_json(member_id: int) -> str:
    """The gateway's form of a 64-bit id: a decimal string."""
    return str(parse_member_id(member_id))


def format_member_id(member_id: int) -> str:
    """The id as etcdctl shows it (lower-case hex, no padding)."""
    return f"{parse_member_id(member_id):x}"


def member_id_from_hex(text: str) -> int:
    return parse_member_id(int(text, 16))


@dataclass(frozen=True)
class Member:
    id: int
    name: str = ""
    peer_urls: tuple[str, ...] = ()
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False

    @property
    def started(self) -> bool:
        """etcd fills in name and client URLs once the member has started and published them."""
        return bool(self.name) and bool(self.client_urls)

    @property
    def is_voter(self) -> bool:
        return not self.is_learner

    @property
    def hex_id(self) -> str:
        return format_member_id(self.id)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Member:
        return cls(
            id=parse_member_id(data.get("ID", 0)),
            name=data.get("name", "") or "",
            peer_urls=tuple(data.get("peerURLs") or ()),
            client_urls=tuple(data.get("clientURLs") or ()),
            is_learner=bool(data.get("isLearner", False)),
        )


@dataclass(frozen=True)
class EtcdStatus:
    endpoint: str
    member_id: int
    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    version: str
    db_size: int
    is_learner: bool
    errors: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_leader(self) -> bool:
        return self.member_id != 0 and self.member_id == self.leader

    @classmethod
    def from_json(cls, endpoint: str, data: dict[str, Any]) -> EtcdStatus:
        header = data.get("header") or {}

        def num(key: str, source: dict[str, Any] = data) -> int:
            return int(source.get(key, 0) or 0)

        return cls(
            endpoint=endpoint,
            member_id=num("member_id", header),
            leader=num("leader"),
            raft_index=num("raftIndex"),
            raft_term=num("raftTerm"),
            raft_applied_index=num("raftAppliedIndex"),
            version=str(data.get("version", "")),
            db_size=num("dbSize"),
            is_learner=bool(data.get("isLearner", False)),
            errors=tuple(data.get("errors") or ()),
            raw=data,
        )


# ---------------------------------------------------------------------------------
# The client


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{type(exc).__name__}: {exc}"


def _is_tls_failure(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    # a timeout during the handshake is an SSLError subclass on some versions; it is
    # an availability problem, not a certificate one
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return False
    return isinstance(exc, (ssl.SSLError, ssl.CertificateError))


class EtcdClient:
    """``EtcdClient(["https://10.0.0.1:2379"], ca_file, cert_file, key_file)``."""

    def __init__(
        self,
        endpoints: list[str] | str,
        ca_file: str,
        cert_file: str,
        key_file: str,
        timeout: float = 5.0,
    ):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        self.endpoints = [e.rstrip("/") for e in endpoints]
        if not self.endpoints:
            raise ValueError("an etcd client needs at least one endpoint")
        self.timeout = timeout
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
        ctx.load_cert_chain(str(cert_file), str(key_file))
        self._ssl = ctx

    def __repr__(self) -> str:
        return f"EtcdClient({self.endpoints!r})"

    # -- transport ------------------------------------------------------------------
    def _once(self, endpoint: str, method: str, path: str, body: dict | None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(endpoint + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self._ssl),
            urllib.request.ProxyHandler({}),  # never send cluster traffic through a proxy
        )
        try:
            with opener.open(req, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    def _call(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        *,
        endpoint: str | None = None,
        idempotent: bool = True,
        accept_status: tuple[int, ...] = (),
    ) -> dict[str, Any]:
        endpoints = [endpoint.rstrip("/")] if endpoint else self.endpoints
        attempts: list[tuple[str, str]] = []
        tls_failures: list[tuple[str, str]] = []
        last_learner_error: EtcdError | None = None
        learner_refusals = 0
        for ep in endpoints:
            try:
                status, raw = self._once(ep, method, path, body)
            except urllib.error.URLError as exc:  # failed before the request was sent
                (tls_failures if _is_tls_failure(exc) else attempts).append((ep, _reason(exc)))
                continue
            except (OSError, http.client.HTTPException) as exc:  # failed after sending
                if _is_tls_failure(exc):
                    # TLS 1.3: the server checks our certificate after the client
                    # finished the handshake, so its refusal shows up on the first read
                    tls_failures.append((ep, _reason(exc)))
                    continue
                attempts.append((ep, _reason(exc)))
                if not idempotent:
                    raise EtcdUnavailable(attempts + tls_failures, outcome_unknown=True) from exc
                continue
            if not (200 <= status < 300 or status in accept_status):
                error = _error_from_body(status, raw, ep)
                if isinstance(error, LearnerRPCUnsupported) and not endpoint:
                    # a definite refusal, nothing was applied: ask the next endpoint
                    attempts.append((ep, error.message))
                    last_learner_error = error
                    learner_refusals += 1
                    continue
                raise error
            try:
                data = json.loads(raw) if raw.strip() else {}
            except ValueError as exc:
                raise EtcdError(
                    status, f"not JSON from {ep}{path}: {raw[:200]!r}", http_status=status, endpoint=ep
                ) from exc
            return data if isinstance(data, dict) else {"value": data}
        if last_learner_error is not None and learner_refusals == len(attempts) and not tls_failures:
            raise last_learner_error  # every endpoint asked is a learner
        if tls_failures and not attempts:
            raise EtcdTLSError(tls_failures)
        raise EtcdUnavailable(attempts + tls_failures)

    # -- cluster membership -----------------------------------------------------------
    def member_list(self) -> list[Member]:
        data = self._call("POST", "/v3/cluster/member/list", {})
        return [Member.from_json(m) for m in data.get("members", [])]

    def _retry_unhealthy(self, fn, wait: float, interval: float = 0.25):
        """Run ``fn``; while etcd answers "unhealthy cluster" (a definite refusal:
        nothing was applied) retry for up to ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return fn()
            except UnhealthyCluster:
                if time.monotonic() + interval > deadline:
                    raise
            time.sleep(interval)

    def member_add(
        self, peer_urls: list[str] | str, *, learner: bool = True, wait: float = 0.0
    ) -> tuple[Member, list[Member]]:
        """Add a member (a learner by default). Returns (the new member, all members).

        ``wait``: seconds to keep retrying while etcd refuses with
        :class:`UnhealthyCluster` (it does for ~5 s after a promote or restart).
        """
        if isinstance(peer_urls, str):
            peer_urls = [peer_urls]
        body = {"peerURLs": list(peer_urls), "isLearner": bool(learner)}
        data = self._retry_unhealthy(
            lambda: self._call("POST", "/v3/cluster/member/add", body, idempotent=False), wait
        )
        return Member.from_json(data["member"]), [Member.from_json(m) for m in data.get("members", [])]

    def member_promote(self, member_id: int) -> list[Member]:
        """Promote a learner; raises :class:`LearnerNotReady` while it is catching up
        (and also while it has not started at all), :class:`MemberNotLearner` if it
        is already a voter."""
        data = self._call(
            "POST", "/v3/cluster/member/promote", {"ID": member_id_to_json(member_id)}, idempotent=False
        )
        return [Member.from_json(m) for m in data.get("members", [])]

    def member_remove(self, member_id: int, *, wait: float = 0.0) -> list[Member]:
        """Remove a member (learner or voter); returns the remaining members.
        ``wait`` as for :meth:`member_add`. Check :func:`quorum_ok_after_remove` first."""
        body = {"ID": member_id_to_json(member_id)}
        data = self._retry_unhealthy(
            lambda: self._call("POST", "/v3/cluster/member/remove", body, idempotent=False), wait
        )
        return [Member.from_json(m) for m in data.get("members", [])]

    # -- health and status ------------------------------------------------------------
    def health(self, endpoint: str | None = None) -> tuple[bool, str]:
        """``GET /health`` on one endpoint (default: the first). Never raises for an
        unreachable endpoint: returns (False, why)."""
        ep = endpoint or self.endpoints[0]
        try:
            data = self._call("GET", "/health", endpoint=ep, accept_status=(503,))
        except EtcdException as exc:
            return False, str(exc)
        ok = str(data.get("health", "")).lower() == "true"
        detail = str(data.get("reason") or ("healthy" if ok else json.dumps(data)))
        return ok, detail

    def status(self, endpoint: str | None = None) -> EtcdStatus:
        """``POST /v3/maintenance/status`` on one endpoint (default: the first)."""
        ep = endpoint or self.endpoints[0]
        return EtcdStatus.from_json(ep, self._call("POST", "/v3/maintenance/status", {}, endpoint=ep))
