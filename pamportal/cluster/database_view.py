"""The cluster's database as the cluster page and the dashboard show it: each PostgreSQL
member's Patroni role, state, timeline and replication lag, read from this node's own
member's REST API (GET /cluster) at most once per ``PATRONI_STATUS_SECONDS`` in each
process, as ``selectors.etcd_status`` reads etcd; or, on a node whose database is not
its Patroni member, where its data is and the command that moves it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from django.conf import settings

from pamportal.replication.database import DatabaseFileError, read_database_file
from pamportal.replication.rest import ClusterMember, PatroniAPIError, PatroniClient

# As etcd's view: 20 operators refreshing the page cost one REST call per window.
PATRONI_STATUS_SECONDS = 3.0
_lock = threading.Lock()
_cache: dict = {}


def patroni_client(*, timeout: float) -> PatroniClient:
    """This node's member's REST API, called with the node's client certificate. Tests
    substitute it; the cache is keyed by it, so a substitute never sees another's answer."""
    from pamportal.replication import local

    return local.node_member().api(timeout=timeout)


@dataclass(frozen=True)
class DatabaseMember:
    """One PostgreSQL member as Patroni's /cluster describes it, in the page's words."""

    name: str
    role: str  # leader, sync_standby, replica, standby_leader, quorum_standby
    state: str  # running, streaming, starting, stopped, ...
    host: str = ""
    port: int | None = None
    timeline: int | None = None
    lag: int | None = None  # bytes behind the leader; None when Patroni does not say

    @classmethod
    def from_rest(cls, member: ClusterMember) -> DatabaseMember:
        return cls(name=member.name, role=member.role, state=member.state, host=member.host, port=member.port,
                   timeline=member.timeline, lag=member.lag)

    @property
    def is_leader(self) -> bool:
        return self.role in ("leader", "standby_leader")

    @property
    def role_label(self) -> str:
        return self.role.replace("_", " ") or "unknown"

    @property
    def lag_label(self) -> str:
        if self.is_leader:
            return "–"
        if self.lag is None:
            return "unknown"
        return f"{self.lag} byte{'s' if self.lag != 1 else ''}"

    @property
    def state_class(self) -> str:
        """The page's status colours: running/streaming are well, stopped or failing not."""
        if self.state in ("running", "streaming"):
            return "succeeded"
        if self.state in ("stopped", "crashed", "start failed", "stopping", "") or "fail" in self.state:
            return "failed"
        return "running"


@dataclass(frozen=True)
class DatabaseStatus:
    """``replicated``: this node's database is its Patroni member (database.json).
    ``ok``: Patroni answered; else ``detail`` says why not (or, when not replicated,
    where the node's data is)."""

    replicated: bool
    ok: bool
    detail: str
    member: str = ""  # this node's member name
    members: tuple[DatabaseMember, ...] = ()
    paused: bool = False

    @property
    def leader(self) -> DatabaseMember | None:
        return next((m for m in self.members if m.is_leader), None)

    def member_named(self, name: str) -> DatabaseMember | None:
        return next((m for m in self.members if m.name == name), None)


def _not_replicated() -> DatabaseStatus:
    engine = settings.DATABASES["default"]["ENGINE"]
    if engine == "django.db.backends.sqlite3":
        where = "SQLite (the embedded default)"
        how = "`manage.py database_to_patroni` moves it onto the node's own PostgreSQL member"
    else:
        where = "the configured database (DATABASE_URL)"
        how = "`manage.py database_to_patroni` moves a SQLite node only"
    return DatabaseStatus(replicated=False, ok=False, detail=f"This node's data is in {where}; not replicated — {how}.")


def _read(member: str, timeout: float) -> DatabaseStatus:
    try:
        view = patroni_client(timeout=timeout).cluster()
    except PatroniAPIError as exc:
        reason = f"{exc.reason} ({exc.url})"
    except LookupError as exc:  # no etcd member, so no member configuration
        reason = str(exc)
    except (OSError, ValueError) as exc:  # the node's TLS files missing or unreadable
        reason = f"{type(exc).__name__}: {exc}"
    else:
        count = len(view.members)
        return DatabaseStatus(replicated=True, ok=True, member=member, paused=view.paused,
                              detail=f"{count} PostgreSQL member{'s' if count != 1 else ''}",
                              members=tuple(DatabaseMember.from_rest(m) for m in view.members))
    return DatabaseStatus(replicated=True, ok=False, member=member, detail=f"Patroni cannot be reached: {reason}")


def patroni_status(*, timeout: float = 2.0, max_age: float = PATRONI_STATUS_SECONDS) -> DatabaseStatus:
    """Patroni's view of the cluster's database, asked at most once per ``max_age``
    seconds in this process (concurrent callers wait for the one call); a failure is
    remembered as long, so an unreachable member slows one view per window, not every one.
    Without database.json, no call at all: where the node's data is instead."""
    try:
        database = read_database_file(settings.PAM_DATA_DIR)
    except DatabaseFileError as exc:
        return DatabaseStatus(replicated=True, ok=False,
                              detail=f"This node's database file cannot be used: {exc.problem}.")
    if database is None:
        return _not_replicated()
    key = (patroni_client, database.member)
    with _lock:
        cached = _cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        status = _read(database.member, timeout)
        _cache.clear()
        _cache[key] = (time.monotonic(), status)
        return status


def patroni_status_forget() -> None:
    with _lock:
        _cache.clear()
