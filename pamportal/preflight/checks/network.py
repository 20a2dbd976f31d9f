"""Network checks: the ports this node needs are free, PostgreSQL answers, and the
node address is well formed and resolves to this machine."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from typing import Callable

import psutil

from pamportal.core.addresses import address_problem

from .base import (
    PORT_ROLES,
    CheckResult,
    PreflightContext,
    _broken,
    _fail,
    _ok,
    _resolve,
    _seconds,
)


# --- ports -----------------------------------------------------------------------------
def _bind_addresses(ctx: PreflightContext) -> list[tuple[int, str]]:
    try:
        ip = ipaddress.ip_address(ctx.address.strip("[]"))
        return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))]
    except ValueError:
        return _resolve(ctx.address, ctx.thresholds.probe_timeout)


def _answers_as_console(host: str, port: int, timeout: float) -> bool:
    """Is the listener on host:port this kind of console (it answers /healthz)?"""
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
                     message="this node uses the embedded SQLite database; cluster nodes keep theirs in "
                             "PostgreSQL under Patroni",
                     remediation="once setup is finalised, stop the node and run `manage.py database_to_patroni` "
                                 "before forming a cluster, or accept the warning for a standalone node")
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
# The one node-address rule (FQDN or IP literal without brackets, not wildcard or multicast).


def check_address_format(ctx: PreflightContext) -> CheckResult:
    problem = address_problem(ctx.address)
    kw = dict(measured=repr(ctx.address), threshold="an FQDN or an IP address")
    if not problem:
        return _ok(message=f"{ctx.address} is a well-formed node address", **kw)
    return _fail(message=f"the node address {ctx.address!r} {problem}", remediation="set the node address to this node's FQDN (e.g. pam1.example.com) "
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
