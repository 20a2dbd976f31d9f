"""Checks of this machine: CPUs, memory, free disk, etcd installed, the licence."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import psutil

from .base import (
    GIB,
    CheckResult,
    PreflightContext,
    _broken,
    _fail,
    _ok,
    _seconds,
)


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
        # Here, not at the top: the catalogue is plain Python that imports without
        # Django's app registry; only this check (run in the worker's thread) uses the ORM.
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
