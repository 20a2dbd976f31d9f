"""The clock check: ask the NTP servers by SNTP (RFC 4330) how far this clock is off."""

from __future__ import annotations

import concurrent.futures as cf
import re
import socket
import struct
import time
from dataclasses import dataclass
from typing import Callable

from .base import (
    CheckResult,
    PreflightContext,
    Severity,
    _broken,
    _fail,
    _ok,
    _resolve,
    _seconds,
)

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
