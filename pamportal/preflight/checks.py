"""The preflight catalogue: named checks that probe this machine for real (bind a port,
resolve a name, ask the NTP servers by SNTP, read the certificate) and say what they
measured, against what threshold, and what an operator should do about a failure.

Plain Python: no ORM and no settings (``conf.py`` builds the context from settings).
Every check has its own timeout; ``run_parallel`` runs independent checks at once, so
a run lasts about as long as its slowest check, not the sum.
"""

from __future__ import annotations

import concurrent.futures as cf
import ipaddress
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Mapping

import psutil
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


# --- hardware and disk -----------------------------------------------------------------
def check_cpu(ctx: PreflightContext) -> CheckResult:
    try:
        count = len(os.sched_getaffinity(0))  # what this process may use (cgroups, taskset)
    except AttributeError:
        count = psutil.cpu_count() or 0
    need = ctx.thresholds.min_cpus
    kw = dict(measured=f"{count} CPUs", threshold=f">= {need} CPUs")
    if count >= need:
        return _ok(message=f"{count} CPUs available", **kw)
    return _fail(message=f"only {count} CPUs available; a production node needs {need}",
                 remediation=f"give this machine at least {need} CPUs, or accept the warning for a lab or test node",
                 **kw)


def check_memory(ctx: PreflightContext) -> CheckResult:
    total = psutil.virtual_memory().total
    need = ctx.thresholds.min_memory_gib
    kw = dict(measured=f"{total / GIB:.1f} GiB", threshold=f">= {need:g} GiB")
    if total >= need * GIB:
        return _ok(message=f"{total / GIB:.1f} GiB of memory", **kw)
    return _fail(message=f"{total / GIB:.1f} GiB of memory; a production node needs {need:g} GiB",
                 remediation=f"give this machine at least {need:g} GiB of memory, or accept the warning for a lab node",
                 **kw)


def check_disk(ctx: PreflightContext) -> CheckResult:
    path = Path(ctx.data_dir)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    need = ctx.thresholds.min_disk_free_gib
    kw = dict(measured=f"{usage.free / GIB:.1f} GiB free", threshold=f">= {need:g} GiB free")
    if not os.access(probe, os.W_OK):
        return _fail(message=f"the data directory {path} is not writable by this process",
                     remediation=f"give the pamportal user write access to {path}", **kw)
    if usage.free >= need * GIB:
        return _ok(message=f"{usage.free / GIB:.1f} GiB free of {usage.total / GIB:.1f} GiB under {path}", **kw)
    return _fail(message=f"only {usage.free / GIB:.1f} GiB free under {path}; the node needs {need:g} GiB "
                         f"for its database, etcd, backups and upgrade packages",
                 remediation=f"free space or grow the file system holding {path} to at least {need:g} GiB free",
                 **kw)


# --- ports -----------------------------------------------------------------------------
def _bind_addresses(ctx: PreflightContext) -> list[tuple[int, str]]:
    try:
        ip = ipaddress.ip_address(ctx.address.strip("[]"))
        return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))]
    except ValueError:
        return _resolve(ctx.address, ctx.thresholds.probe_timeout)


def _answers_as_console(host: str, port: int, timeout: float) -> bool:
    """Is the listener on host:port this kind of console (it answers /healthz)?"""
    import http.client

    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE  # only recognising the listener, not trusting it
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        return response.status == 200 and b'"status": "ok"' in response.read(200)
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def port_free_check(standard: str) -> Callable[[PreflightContext], CheckResult]:
    role = PORT_ROLES[standard]

    def check(ctx: PreflightContext) -> CheckResult:
        port = int(ctx.ports.get(standard, int(standard)))
        kw = dict(threshold="free to listen on")
        try:
            targets = _bind_addresses(ctx)
        except (OSError, TimeoutError) as exc:
            return _broken(measured="address does not resolve", message=f"cannot bind port {port}: the node address "
                           f"{ctx.address!r} does not resolve ({exc})",
                           remediation="fix the node address first (see address.resolves-to-self)", **kw)
        for family, host in targets:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                # As the real server will: reuse past TIME_WAIT, but not a live listener.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(1)
            except PermissionError:
                return _broken(measured=f"{host}:{port} not bindable", message=f"not allowed to bind port {port} "
                               f"on {host} ({role}); ports below 1024 need root or CAP_NET_BIND_SERVICE",
                               remediation="run preflight as the service user the node runs as", **kw)
            except OSError as exc:
                if standard == "443" and _answers_as_console(host, port, ctx.thresholds.probe_timeout):
                    return _ok(measured=f"{host}:{port} served by this console",
                               message=f"port {port} on {host} is held by this pamportal console", **kw)
                return _fail(measured=f"{host}:{port} in use", message=f"port {port} ({role}) on {host} is already "
                             f"in use: {exc.strerror or exc}",
                             remediation=f"stop the program listening on {host}:{port} "
                                         f"(find it with: ss -ltnp 'sport = :{port}')", **kw)
            finally:
                sock.close()
        where = ", ".join(f"{h}:{port}" for _, h in targets)
        return _ok(measured=f"{where} free", message=f"port {port} ({role}) is free on {where}", **kw)

    return check


def check_postgres(ctx: PreflightContext) -> CheckResult:
    timeout = ctx.thresholds.probe_timeout
    if not ctx.postgres_host:
        return _fail(measured="no PostgreSQL configured", threshold="TCP connect",
                     message="this node uses the embedded SQLite database; cluster nodes share PostgreSQL",
                     remediation="set DATABASE_URL to a PostgreSQL server before forming a cluster, "
                                 "or accept the warning for a standalone node")
    target = f"{ctx.postgres_host}:{ctx.postgres_port}"
    kw = dict(threshold=f"TCP connect within {_seconds(timeout)}")
    start = time.monotonic()
    try:
        with socket.create_connection((ctx.postgres_host, ctx.postgres_port), timeout=timeout):
            took = time.monotonic() - start
    except (TimeoutError, socket.timeout):
        return _fail(measured="no answer", message=f"PostgreSQL at {target} did not answer within {_seconds(timeout)}",
                     remediation=f"check that {target} is up and that a firewall lets TCP {ctx.postgres_port} through",
                     **kw)
    except OSError as exc:
        return _fail(measured="unreachable", message=f"cannot connect to PostgreSQL at {target}: {exc.strerror or exc}",
                     remediation=f"start PostgreSQL on {target}, or correct the host and port in DATABASE_URL", **kw)
    return _ok(measured=f"connected in {took * 1000:.0f} ms", message=f"PostgreSQL at {target} accepts connections", **kw)


# --- the node address ------------------------------------------------------------------
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a usable node address (FQDN or IP), or None when it is."""
    address = (address or "").strip()
    if not address:
        return "the node address is empty"
    bare = address[1:-1] if address.startswith("[") and address.endswith("]") else address
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.is_unspecified:
            return f"{address} is the wildcard address; give the address other nodes will use"
        if ip.is_multicast:
            return f"{address} is a multicast address"
        return None
    name = address[:-1] if address.endswith(".") else address
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        return f"{address!r} looks like an IPv4 address but is not one (each part must be 0-255, four parts)"
    if len(name) > 253:
        return f"the name is {len(name)} characters long; a DNS name has at most 253"
    bad = next((label for label in labels if not _LABEL.match(label)), None)
    if bad is not None:
        shown = bad if bad else "(empty)"
        return (f"{address!r} is not a valid host name: label {shown!r} may only hold letters, digits and "
                f"inner hyphens, 1-63 characters")
    if labels[-1].isdigit():
        return f"{address!r} is not a valid host name: the top-level label cannot be all digits"
    if name.lower() == "localhost" or len(labels) < 2:
        return f"{address!r} is not fully qualified; other nodes must reach this one by it"
    return None


def check_address_format(ctx: PreflightContext) -> CheckResult:
    problem = address_problem(ctx.address)
    kw = dict(measured=repr(ctx.address), threshold="an FQDN or an IP address")
    if problem is None:
        return _ok(message=f"{ctx.address} is a well-formed node address", **kw)
    return _fail(message=problem, remediation="set the node address to this node's FQDN (e.g. pam1.example.com) "
                                              "or its IP address", **kw)


def own_addresses() -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    out = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            addr = entry.address.split("%", 1)[0]
            mask = entry.netmask or ("32" if entry.family == socket.AF_INET else "128")
            try:
                out.append(ipaddress.ip_interface(f"{addr}/{mask}"))
            except ValueError:
                continue
    return out


def is_own_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, interfaces=None) -> bool:
    interfaces = own_addresses() if interfaces is None else interfaces
    for iface in interfaces:
        if iface.ip == ip:
            return True
        # The whole loopback network answers locally (127.0.0.11 is this machine too).
        if ip.is_loopback and iface.ip.is_loopback and ip in iface.network:
            return True
    return False


def check_address_self(ctx: PreflightContext) -> CheckResult:
    timeout = ctx.thresholds.probe_timeout
    interfaces = own_addresses()
    mine = ", ".join(sorted({str(i.ip) for i in interfaces if not i.ip.is_link_local})) or "none"
    kw = dict(threshold="resolves to one of this machine's addresses")
    if not ctx.address.strip():
        return _fail(measured="no address", message="the node address is empty", remediation="set the node address",
                     **kw)
    try:
        resolved = [ipaddress.ip_address(host) for _, host in _resolve(ctx.address.strip("[]"), timeout)]
    except TimeoutError:
        return _broken(measured="no answer", message=f"the name server did not answer for {ctx.address!r} within "
                       f"{_seconds(timeout)}", remediation="check /etc/resolv.conf and that the name servers are "
                                                           "reachable", **kw)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return _fail(measured="does not resolve", message=f"{ctx.address!r} does not resolve: {reason}",
                     remediation=f"add an A/AAAA record (or an /etc/hosts line) for {ctx.address} pointing at one of "
                                 f"this machine's addresses: {mine}", **kw)
    shown = ", ".join(str(ip) for ip in resolved)
    own = [ip for ip in resolved if is_own_address(ip, interfaces)]
    if own:
        return _ok(measured=shown, message=f"{ctx.address} resolves to {shown}, this machine's own "
                                           f"{'address' if len(own) == 1 else 'addresses'}", **kw)
    return _fail(measured=shown, message=f"{ctx.address} resolves to {shown}, none of which is this machine's "
                                         f"(it has {mine})",
                 remediation=f"point the DNS record for {ctx.address} at one of: {mine}, or use the right address",
                 **kw)


# --- clock: SNTP (RFC 4330) ------------------------------------------------------------
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01


def ntp_to_unix(raw: bytes) -> float:
    seconds, fraction = struct.unpack("!II", raw)
    return seconds - NTP_EPOCH_OFFSET + fraction / 2**32


def unix_to_ntp(value: float) -> bytes:
    seconds = int(value)
    fraction = int((value - seconds) * 2**32) & 0xFFFFFFFF
    return struct.pack("!II", (seconds + NTP_EPOCH_OFFSET) & 0xFFFFFFFF, fraction)


def _split_server(server: str) -> tuple[str, int]:
    server = server.strip()
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", server)
    if match:
        return match.group(1), int(match.group(2) or 123)
    if server.count(":") == 1:
        host, port = server.split(":")
        return host, int(port)
    return server, 123


@dataclass(frozen=True)
class SntpAnswer:
    server: str
    offset: float | None = None  # seconds this clock is behind (+) or ahead (-) of the server
    delay: float | None = None
    problem: str = ""


def sntp_query(server: str, timeout: float, clock: Callable[[], float] = time.time) -> SntpAnswer:
    """One SNTP exchange: offset = ((T2 - T1) + (T3 - T4)) / 2 (RFC 4330 section 5)."""
    deadline = time.monotonic() + timeout
    try:
        host, port = _split_server(server)
        family, address = _resolve(host, timeout, kind=socket.SOCK_DGRAM)[0]
    except (OSError, TimeoutError, ValueError, IndexError) as exc:
        return SntpAnswer(server, problem=f"cannot resolve: {exc}")
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        t1 = clock()
        request = bytearray(48)
        request[0] = (0 << 6) | (4 << 3) | 3  # no leap warning, version 4, mode 3 (client)
        sent_stamp = unix_to_ntp(t1)
        request[40:48] = sent_stamp
        sock.sendto(bytes(request), (address, port))
        for _ in range(16):  # a few stray datagrams at most, all inside the deadline
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data, _ = sock.recvfrom(512)
            except (TimeoutError, socket.timeout):
                break
            t4 = clock()
            if len(data) < 48 or data[0] & 0x7 != 4 or data[24:32] != sent_stamp:
                continue  # not the answer to our request
            if data[1] == 0:
                return SntpAnswer(server, problem=f"refused the query (kiss code {data[12:16].decode('ascii', 'replace')!r})")
            if data[0] >> 6 == 3:
                return SntpAnswer(server, problem="answered but says its own clock is not synchronised")
            t2, t3 = ntp_to_unix(data[32:40]), ntp_to_unix(data[40:48])
            if data[40:48] == bytes(8):
                continue
            return SntpAnswer(server, offset=((t2 - t1) + (t3 - t4)) / 2, delay=(t4 - t1) - (t3 - t2))
        return SntpAnswer(server, problem=f"no answer within {_seconds(timeout)}")
    except OSError as exc:
        return SntpAnswer(server, problem=f"{exc.strerror or exc}")
    finally:
        sock.close()


def check_ntp(ctx: PreflightContext) -> CheckResult:
    limits = ctx.thresholds
    kw = dict(threshold=f"|offset| < {_seconds(limits.ntp_warn_seconds)} (error from {_seconds(limits.ntp_error_seconds)})")
    servers = [s for s in ctx.ntp_servers if s.strip()]
    if not servers:
        return _fail(measured="no NTP servers", severity=Severity.WARNING, message="no NTP servers are configured, so "
                     "the clock cannot be checked", remediation="set the NTP servers this node uses (setup, "
                                                                 "PAM_PREFLIGHT_NTP_SERVERS)", **kw)
    with cf.ThreadPoolExecutor(max_workers=len(servers), thread_name_prefix="sntp") as pool:
        answers = list(pool.map(lambda s: sntp_query(s, limits.probe_timeout), servers))
    good = [a for a in answers if a.offset is not None]
    silent = "; ".join(f"{a.server}: {a.problem}" for a in answers if a.offset is None)
    if not good:
        return _broken(measured="no answer", severity=Severity.WARNING,
                       message=f"no NTP server answered ({silent})",
                       remediation="let UDP port 123 through to the NTP servers, or configure servers this node can "
                                   "reach; on an isolated network accept with how the clock is kept right", **kw)
    offsets = sorted(a.offset for a in good)
    offset = offsets[len(offsets) // 2]  # the median: one bad server does not decide
    each = ", ".join(f"{a.server} {a.offset:+.3f} s" for a in good)
    note = f"; not answering: {silent}" if silent else ""
    measured = f"{offset:+.3f} s"
    if abs(offset) >= limits.ntp_error_seconds:
        return _fail(measured=measured, severity=Severity.ERROR,
                     message=f"this clock is {abs(offset):.3f} s {'behind' if offset > 0 else 'ahead of'} the NTP "
                             f"servers ({each}){note}; certificates and the cluster need clocks within 2 s",
                     remediation="synchronise the clock (e.g. systemctl enable --now systemd-timesyncd, or chrony) "
                                 "and run preflight again", **kw)
    if abs(offset) >= limits.ntp_warn_seconds:
        return _fail(measured=measured, severity=Severity.WARNING,
                     message=f"this clock is {abs(offset):.3f} s off the NTP servers ({each}){note}",
                     remediation="check that time synchronisation is running (timedatectl status)", **kw)
    return _ok(measured=measured,
               message=f"clock within {abs(offset):.3f} s of the NTP servers ({each}){note}", **kw)


# --- the node certificate --------------------------------------------------------------
def check_certificate(ctx: PreflightContext, now: datetime | None = None) -> CheckResult:
    from cryptography import x509

    need = ctx.thresholds.cert_min_days
    kw = dict(threshold=f">= {need} days left")
    path = Path(ctx.certificate_path) if ctx.certificate_path else None
    if path is None or not path.is_file():
        return _fail(measured="no certificate", message=f"no node certificate at {path or '(no path set)'}",
                     remediation="create one with: manage.py tls_ensure", **kw)
    data = path.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as exc:
        return _fail(measured="unreadable", message=f"{path} is not an X.509 certificate: {exc}",
                     remediation="replace it: manage.py tls_ensure --force", **kw)
    now = now or datetime.now(timezone.utc)
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    days = (after - now).total_seconds() / 86400
    measured = f"{days:.0f} days left (until {after:%Y-%m-%d %H:%M} UTC)"
    if now < before:
        return _fail(measured=f"not valid until {before:%Y-%m-%d %H:%M} UTC", severity=Severity.ERROR,
                     message=f"the node certificate is not valid yet (from {before:%Y-%m-%d %H:%M} UTC): "
                             f"is this clock behind?", remediation="check the clock, then: manage.py tls_ensure --force",
                     **kw)
    if now >= after:
        return _fail(measured=f"expired {after:%Y-%m-%d %H:%M} UTC", severity=Severity.ERROR,
                     message=f"the node certificate expired on {after:%Y-%m-%d %H:%M} UTC",
                     remediation="renew it: manage.py tls_ensure --force", **kw)
    if days < need:
        return _fail(measured=measured, severity=Severity.WARNING,
                     message=f"the node certificate expires in {days:.0f} days",
                     remediation="renew it before it expires: manage.py tls_ensure --force", **kw)
    return _ok(measured=measured, message=f"the node certificate is valid until {after:%Y-%m-%d} UTC", **kw)


# --- software and licence --------------------------------------------------------------
def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def check_etcd(ctx: PreflightContext) -> CheckResult:
    need = ctx.thresholds.etcd_min_version
    timeout = ctx.thresholds.command_timeout
    kw = dict(threshold=f"etcd >= {need}")
    hint = "install Debian's etcd-server package: apt-get install etcd-server"
    found = shutil.which(ctx.etcd_command, path=ctx.search_path)
    if found is None:
        return _fail(measured="not installed", message=f"{ctx.etcd_command!r} is not on the PATH, so this node cannot "
                     f"run cluster membership", remediation=hint, **kw)
    try:
        done = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return _broken(measured="no answer", message=f"{found} --version did not finish within {_seconds(timeout)}",
                       remediation=hint, **kw)
    except OSError as exc:
        return _fail(measured="cannot run", message=f"{found} cannot be run: {exc}", remediation=hint, **kw)
    match = re.search(r"etcd Version:\s*(\d+\.\d+\.\d+)", done.stdout + done.stderr)
    if match is None:
        return _fail(measured="unknown version", message=f"{found} --version did not print an etcd version",
                     remediation=hint, **kw)
    version = match.group(1)
    if _version_tuple(version) < _version_tuple(need):
        return _fail(measured=f"etcd {version}", message=f"{found} is etcd {version}; the cluster needs {need} or later",
                     remediation="upgrade etcd-server (apt-get install --only-upgrade etcd-server)", **kw)
    return _ok(measured=f"etcd {version}", message=f"{found} is etcd {version}", **kw)


def check_licence(ctx: PreflightContext) -> CheckResult:
    kw = dict(threshold="a valid licence")
    remedy = "upload the licence file from the vendor (Licence page, or the setup wizard's licence step)"
    try:
        from pamportal.licensing.selectors import licence_status
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name not in ("pamportal.licensing.selectors", None):
            raise
        return _fail(measured="none", message="no licence installed", remediation=remedy, **kw)
    status = licence_status()
    days = getattr(status, "days_left", None)
    measured = f"{days} days left" if days is not None else ("valid" if status.ok else "none")
    if status.ok:
        return _ok(measured=measured, message=status.message or "the licence is valid", **kw)
    return _fail(measured=measured, message=status.message or "no valid licence", remediation=remedy, **kw)


# --- the catalogue ---------------------------------------------------------------------
def _probe(limits: Thresholds) -> float:
    return limits.probe_timeout


def _local(limits: Thresholds) -> float:
    return 5.0


def _resolve_then_probe(limits: Thresholds) -> float:
    return 2 * limits.probe_timeout  # the node name may have to be resolved first


CATALOGUE: tuple[Check, ...] = (
    Check("hardware.cpu", "CPUs", Severity.WARNING, True, check_cpu, _local),
    Check("hardware.memory", "Memory", Severity.WARNING, True, check_memory, _local),
    Check("disk.data-dir", "Free space in the data directory", Severity.ERROR, False, check_disk, _local),
    *(
        Check(f"port.{p}.free", f"Port {p} free ({role})", Severity.ERROR, False, port_free_check(p), _resolve_then_probe)
        for p, role in PORT_ROLES.items()
    ),
    Check("port.5432.reachable", "PostgreSQL reachable", Severity.WARNING, True, check_postgres, _probe),
    Check("address.format", "Node address is an FQDN or IP", Severity.ERROR, False, check_address_format, _local),
    Check("address.resolves-to-self", "Node address resolves to this machine", Severity.ERROR, False,
          check_address_self, _probe),
    # An error beyond ntp_error_seconds; a warning (acceptable) between the two thresholds
    # or when no server answers.
    Check("clock.ntp-offset", "Clock agrees with the NTP servers", Severity.ERROR, True, check_ntp,
          _resolve_then_probe),
    # An error when expired or not yet valid; a warning (acceptable) in the last days.
    Check("tls.certificate-validity", "Node certificate validity", Severity.ERROR, True, check_certificate, _local),
    Check("etcd.binary", "etcd installed", Severity.ERROR, False, check_etcd, lambda t: t.command_timeout),
    Check("licence.valid", "Licence", Severity.ERROR, False, check_licence, _local, uses_database=True),
)
BY_ID: dict[str, Check] = {check.id: check for check in CATALOGUE}
GRACE_SECONDS = 1.0  # past its own timeout, a check that has not returned is given up


def run_check(check: Check, ctx: PreflightContext) -> CheckResult:
    """Run one check; a crash is the check's "could not run", never an exception."""
    start = time.monotonic()
    try:
        result = check.run(ctx)
    except Exception as exc:
        result = _broken(message=f"the check itself failed: {type(exc).__name__}: {exc}",
                         remediation="report this to support with the job's output")
    return replace(result, duration=time.monotonic() - start)


def skipped(check: Check) -> CheckResult:
    return CheckResult(status=CheckStatus.SKIPPED, message="not part of this run")


def run_parallel(
    checks: Iterable[Check],
    ctx: PreflightContext,
    *,
    on_result: Callable[[Check, CheckResult], None] | None = None,
    tick: float | None = None,
    on_tick: Callable[[], None] | None = None,
) -> dict[str, CheckResult]:
    """Run the checks at once, each bounded by its own timeout (plus a grace second).

    ``on_result`` and ``on_tick`` are called in the caller's thread (so they may use
    the caller's database connection): once per check as it finishes, and at least
    every ``tick`` seconds while waiting. Checks named in ``ctx.skip`` are "skipped".
    """
    checks = list(checks)
    results: dict[str, CheckResult] = {}

    def done(check: Check, result: CheckResult) -> None:
        results[check.id] = result
        if on_result is not None:
            on_result(check, result)

    threaded = [c for c in checks if c.id not in ctx.skip and not c.uses_database]
    pool = cf.ThreadPoolExecutor(max_workers=max(1, len(threaded)), thread_name_prefix="preflight")
    try:
        start = time.monotonic()
        futures = {pool.submit(run_check, c, ctx): c for c in threaded}
        deadlines = {f: start + c.timeout(ctx.thresholds) + GRACE_SECONDS for f, c in futures.items()}
        for check in checks:
            if check.id in ctx.skip:
                done(check, skipped(check))
            elif check.uses_database:
                done(check, run_check(check, ctx))
        waiting = set(futures)
        last_tick = time.monotonic()
        while waiting:
            now = time.monotonic()
            wait_for = min(deadlines[f] for f in waiting) - now
            if tick is not None:
                wait_for = min(wait_for, last_tick + tick - now)
            finished, waiting = cf.wait(waiting, timeout=max(0.0, wait_for), return_when=cf.FIRST_COMPLETED)
            for future in finished:
                done(futures[future], future.result())
            now = time.monotonic()
            for future in [f for f in waiting if deadlines[f] <= now]:
                waiting.discard(future)
                check = futures[future]
                limit = check.timeout(ctx.thresholds)
                done(check, _broken(message=f"the check did not finish within its {_seconds(limit)} timeout",
                                    remediation="run preflight again; if it keeps timing out, report it to support",
                                    duration=now - start))
            if on_tick is not None and tick is not None and now - last_tick >= tick:
                on_tick()
                last_tick = now
    finally:
        # A probe stuck past its deadline is not waited for; its thread ends on its own.
        pool.shutdown(wait=False, cancel_futures=True)
    return results
