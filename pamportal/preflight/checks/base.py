"""What every preflight check is made of (statuses, thresholds, the context, a
result) and the helpers they share. The preflight catalogue: named checks that probe this machine for real (bind a port,
resolve a name, ask the NTP servers by SNTP, read the certificate) and say what they
measured, against what threshold, and what an operator should do about a failure.

Plain Python: no ORM and no settings (``conf.py`` builds the context from settings).
Every check has its own timeout; ``run_parallel`` runs independent checks at once, so
a run lasts about as long as its slowest check, not the sum.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Mapping

from django.db import models

GIB = 2**30


class Severity(models.TextChoices):
    ERROR = "error", "Error"
    WARNING = "warning", "Warning"


class CheckStatus(models.TextChoices):
    PENDING = "pending", "Not run yet"
    PASS = "pass", "Passed"
    FAIL = "fail", "Failed"
    ERROR = "error", "Could not run"  # the probe itself broke or timed out
    SKIPPED = "skipped", "Not part of this run"


FAILING = frozenset({CheckStatus.FAIL, CheckStatus.ERROR})

# The ports the catalogue checks, by their standard number (the check ids use it);
# a context maps each to the port this node really uses.
PORT_ROLES: dict[str, str] = {
    "443": "web console (HTTPS)",
    "9002": "client-side service",
    "2380": "etcd peer",
    "2390": "cluster setup API",
    "2391": "cluster delegation API",
    "8008": "Patroni REST API",
}


@dataclass(frozen=True)
class Thresholds:
    """What a production appliance needs; tests and labs lower them (see conf.py)."""

    min_cpus: int = 4
    min_memory_gib: float = 16.0
    min_disk_free_gib: float = 40.0
    # Each node within 1 s of the reference keeps any two nodes within the 2 s the
    # cluster rules allow; from 0.5 s on it is worth a look.
    ntp_warn_seconds: float = 0.5
    ntp_error_seconds: float = 1.0
    cert_min_days: int = 30
    etcd_min_version: str = "3.4.0"
    probe_timeout: float = 3.0  # one network probe: bind, connect, DNS, one SNTP query
    command_timeout: float = 5.0  # one external command (etcd --version)


@dataclass(frozen=True)
class PreflightContext:
    """Everything the checks look at. Snapshotted with each run (``to_dict``)."""

    address: str
    ports: Mapping[str, int] = field(default_factory=lambda: {p: int(p) for p in PORT_ROLES})
    ntp_servers: tuple[str, ...] = ()
    data_dir: str = "/var/lib/pamportal"
    certificate_path: str = ""
    postgres_host: str = ""  # empty: the node uses the embedded SQLite database
    postgres_port: int = 5432
    thresholds: Thresholds = field(default_factory=Thresholds)
    etcd_command: str = "etcd"
    search_path: str | None = None  # PATH to look for etcd in; None: this process's PATH
    skip: tuple[str, ...] = ()  # check ids recorded as "not part of this run"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ports"] = {str(k): int(v) for k, v in self.ports.items()}
        data["ntp_servers"] = list(self.ntp_servers)
        data["skip"] = list(self.skip)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "PreflightContext":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        limits = {f.name for f in fields(Thresholds)}
        values["thresholds"] = Thresholds(**{k: v for k, v in dict(data.get("thresholds") or {}).items() if k in limits})
        values["ports"] = {str(k): int(v) for k, v in dict(data.get("ports") or {}).items()}
        values["ntp_servers"] = tuple(data.get("ntp_servers") or ())
        values["skip"] = tuple(data.get("skip") or ())
        return cls(**values)

    def with_thresholds(self, **changes) -> "PreflightContext":
        return replace(self, thresholds=replace(self.thresholds, **changes))


@dataclass(frozen=True)
class CheckResult:
    status: str
    measured: str = ""
    threshold: str = ""
    message: str = ""
    remediation: str = ""
    severity: str | None = None  # set by checks with two thresholds (warning, then error)
    duration: float = 0.0

    @property
    def failing(self) -> bool:
        return self.status in FAILING


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    severity: str  # the worst this check reports; a result may say "warning" instead
    can_accept: bool  # may a failed *warning* of this check be accepted with a reason?
    run: Callable[[PreflightContext], CheckResult]
    timeout: Callable[[Thresholds], float]
    uses_database: bool = False  # run in the caller's thread (its connection, its transaction)

    def result_severity(self, result: CheckResult) -> str:
        return result.severity or self.severity

    def acceptable(self, result: CheckResult) -> bool:
        """Errors never; version, key and quorum checks never; other warnings may be."""
        return self.can_accept and result.failing and self.result_severity(result) == Severity.WARNING


def _ok(**kw) -> CheckResult:
    return CheckResult(status=CheckStatus.PASS, **kw)


def _fail(**kw) -> CheckResult:
    return CheckResult(status=CheckStatus.FAIL, **kw)


def _broken(**kw) -> CheckResult:
    return CheckResult(status=CheckStatus.ERROR, **kw)


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _call_with_timeout(fn: Callable, timeout: float, name: str):
    """Run ``fn`` in a daemon thread and wait at most ``timeout``. Raises TimeoutError.

    For calls that take no timeout of their own (getaddrinfo): a stuck resolver thread
    is left to finish on its own; the check has already answered."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {_seconds(timeout)}")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _resolve(host: str, timeout: float, *, kind: int = socket.SOCK_STREAM) -> list[tuple]:
    """getaddrinfo with a timeout: [(family, sockaddr), ...], duplicates removed."""
    infos = _call_with_timeout(lambda: socket.getaddrinfo(host, None, type=kind), timeout, f"resolve {host}")
    seen, out = set(), []
    for family, _, _, _, sockaddr in infos:
        if sockaddr[0] not in seen:
            seen.add(sockaddr[0])
            out.append((family, sockaddr[0]))
    return out
