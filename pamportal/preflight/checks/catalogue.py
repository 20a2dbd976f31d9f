"""The catalogue of checks in the order a run shows them, and running them: one
bounded by its timeout, or all at once."""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import replace
from typing import Callable, Iterable

from .base import (
    PORT_ROLES,
    Check,
    CheckResult,
    CheckStatus,
    PreflightContext,
    Severity,
    Thresholds,
    _broken,
    _call_with_timeout,
    _seconds,
)
from .clock import check_ntp
from .network import check_address_format, check_address_self, check_postgres, port_free_check
from .system import check_cpu, check_disk, check_etcd, check_licence, check_memory
from .tls import check_certificate


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


def run_bounded(check: Check, ctx: PreflightContext) -> CheckResult:
    """Run one check (``skipped`` when ``ctx`` skips it), given up past its timeout plus
    a grace second: a stuck probe's thread is left to end on its own. A check that uses
    the database runs in the caller's thread (its connection, its transaction)."""
    if check.id in ctx.skip:
        return skipped(check)
    if check.uses_database:
        return run_check(check, ctx)
    limit = check.timeout(ctx.thresholds)
    start = time.monotonic()
    try:
        return _call_with_timeout(lambda: run_check(check, ctx), limit + GRACE_SECONDS, f"preflight-{check.id}")
    except TimeoutError:
        return _broken(message=f"the check did not finish within its {_seconds(limit)} timeout",
                       remediation="run preflight again; if it keeps timing out, report it to support",
                       duration=time.monotonic() - start)
