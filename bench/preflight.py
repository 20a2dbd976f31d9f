"""Preflight benchmark (run on demand, not part of the suite).

    .venv/bin/python bench/preflight.py

Wall time of the full catalogue on loopback (1) with every check passing: a local SNTP
responder, free high ports, a PostgreSQL stand-in listening locally, low thresholds;
(2) with every network probe pointed at a silent address: NTP servers that are UDP
sockets never answering, PostgreSQL at an address nobody answers (TEST-NET-1,
192.0.2.1) and a name server that never answers. The checks run in parallel, so (2)
must end at about the longest single timeout, not the sum. Prints both, the slowest
single check of each, and the ratio.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    data = tempfile.mkdtemp(prefix="pam-bench-preflight-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pamportal.settings_test")
    os.environ["PAM_DATA_DIR"] = data
    import django

    django.setup()
    from dataclasses import replace

    from pamportal.preflight import checks
    from pamportal.preflight.checks import CATALOGUE, run_parallel
    from tests.preflight.support import SntpResponder, context, held_port, silent_udp

    licensed = SimpleNamespace(ok=True, message="licensed", days_left=300)
    timeout = 2.0
    tmp = Path(data)
    with mock.patch("pamportal.licensing.selectors.licence_status", lambda: licensed):
        # 1. everything passing
        with SntpResponder() as a, SntpResponder() as b, held_port() as pg:
            ctx = context(tmp, ntp=(a.address, b.address), postgres_port=pg).with_thresholds(probe_timeout=timeout)
            start = time.monotonic()
            ok = run_parallel(CATALOGUE, ctx)
            ok_wall = time.monotonic() - start
        failing = {k: r.status for k, r in ok.items() if r.status != "pass"}
        report("all passing", ok_wall, ok, failing)

        # 2. every network probe silent
        real_getaddrinfo = socket.getaddrinfo

        def silent_dns(host, *args, **kwargs):
            if host == "pam-silent.example.com":
                time.sleep(timeout * 3)  # a name server that never answers (the probe gives up first)
                raise socket.gaierror("too late")
            return real_getaddrinfo(host, *args, **kwargs)

        with silent_udp() as n1, silent_udp() as n2, silent_udp() as n3, \
                mock.patch.object(checks.socket, "getaddrinfo", silent_dns):
            ctx = replace(context(tmp, ntp=(n1, n2, n3)), postgres_host="192.0.2.1", postgres_port=5432,
                          address="pam-silent.example.com").with_thresholds(probe_timeout=timeout)
            start = time.monotonic()
            silent = run_parallel(CATALOGUE, ctx)
            silent_wall = time.monotonic() - start
        report("network silent", silent_wall, silent, {k: r.status for k, r in silent.items() if r.status != "pass"})
        total = sum(r.duration for r in silent.values())
        print(f"  sum of every check's own time: {total:.2f} s (what running them one after another would cost)")
        print(f"  probe timeout: {timeout:.1f} s; longest single timeout in the catalogue: "
              f"{max(c.timeout(ctx.thresholds) for c in CATALOGUE):.1f} s")


def report(name: str, wall: float, results: dict, not_passing: dict) -> None:
    slowest_id, slowest = max(results.items(), key=lambda kv: kv[1].duration)
    print(f"{name}: {wall:.3f} s wall for {len(results)} checks; slowest single check {slowest_id} "
          f"{slowest.duration:.3f} s; ratio wall/slowest = {wall / max(slowest.duration, 1e-6):.2f}")
    if not_passing:
        print(f"  not passing: {', '.join(f'{k}={v}' for k, v in sorted(not_passing.items()))}")


if __name__ == "__main__":
    main()
