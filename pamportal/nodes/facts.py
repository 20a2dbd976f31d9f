"""The "collect node facts" job: what this machine is, as preflight will judge it."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import sys
import time
from datetime import datetime, timezone

import celery
import django
import psutil
from django.conf import settings

from pamportal.jobs.registry import JobKind, StepSpec, register

KIND = "node.facts"


def _hardware(ctx) -> dict:
    memory = psutil.virtual_memory()
    facts = {"cpu_count": os.cpu_count() or 0, "memory_total_bytes": memory.total, "memory_available_bytes": memory.available}
    ctx.log(f"{facts['cpu_count']} CPUs, {memory.total / 2**30:.1f} GiB memory ({memory.available / 2**30:.1f} GiB available)")
    return facts


def _storage(ctx) -> dict:
    usage = shutil.disk_usage(settings.PAM_DATA_DIR)
    ctx.log(f"data directory: {usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB")
    return {"data_dir": str(settings.PAM_DATA_DIR), "disk_total_bytes": usage.total, "disk_free_bytes": usage.free}


def _software(ctx) -> dict:
    facts = {
        "os": f"{platform.system()} {platform.release()}",
        "os_pretty": _os_pretty_name(),
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "django": django.get_version(),
        "celery": celery.__version__,
        "pamportal": settings.PAM_VERSION,
    }
    ctx.log(f"{facts['os_pretty']}; Python {facts['python']}, Django {facts['django']}, Celery {facts['celery']}")
    return facts


def _os_pretty_name() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _network(ctx) -> dict:
    listening = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr:
            listening.add((conn.laddr.ip, conn.laddr.port))
    ports = sorted({port for _, port in listening})
    ctx.log(f"{len(ports)} listening TCP ports: {', '.join(map(str, ports[:40]))}")
    return {"listening_ports": ports, "listening": [f"{ip}:{port}" for ip, port in sorted(listening)]}


def _clock(ctx) -> dict:
    now = datetime.now(timezone.utc)
    facts = {"utc": now.isoformat(timespec="seconds"), "epoch": time.time(), "timezone": time.tzname[0]}
    ctx.log(f"clock reads {facts['utc']} (local zone {facts['timezone']})")
    return facts


register(
    JobKind(
        name=KIND,
        title="Collect node facts",
        steps=(
            StepSpec("hardware", "CPU and memory", _hardware, max_attempts=2),
            StepSpec("storage", "Free space in the data directory", _storage, max_attempts=2),
            StepSpec("software", "Operating system and software versions", _software, max_attempts=2),
            StepSpec("network", "Listening ports", _network, max_attempts=2),
            StepSpec("clock", "Clock", _clock, max_attempts=2),
        ),
    )
)
