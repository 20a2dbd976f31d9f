"""The preflight catalogue: named checks that probe this machine for real (bind a port,
resolve a name, ask the NTP servers by SNTP, read the certificate) and say what they
measured, against what threshold, and what an operator should do about a failure.

Plain Python: no ORM and no settings (``conf.py`` builds the context from settings).
The checks live by subject (``system``, ``network``, ``clock``, ``tls``); ``catalogue``
orders them and runs them. This package is where callers import them from.
"""

import socket  # noqa: F401  (bench/preflight.py patches checks.socket.getaddrinfo)

from .base import (
    FAILING,
    GIB,
    PORT_ROLES,
    Check,
    CheckResult,
    CheckStatus,
    PreflightContext,
    Severity,
    Thresholds,
)
from .catalogue import BY_ID, CATALOGUE, GRACE_SECONDS, run_bounded, run_check, run_parallel, skipped
from .clock import NTP_EPOCH_OFFSET, SntpAnswer, check_ntp, ntp_to_unix, sntp_query, unix_to_ntp
from .network import (
    address_problem,
    check_address_format,
    check_address_self,
    check_postgres,
    is_own_address,
    own_addresses,
    port_free_check,
)
from .system import check_cpu, check_disk, check_etcd, check_licence, check_memory
from .tls import check_certificate

__all__ = [
    "BY_ID", "CATALOGUE", "FAILING", "GIB", "GRACE_SECONDS", "NTP_EPOCH_OFFSET", "PORT_ROLES",
    "Check", "CheckResult", "CheckStatus", "PreflightContext", "Severity", "SntpAnswer", "Thresholds",
    "address_problem", "check_address_format", "check_address_self", "check_certificate", "check_cpu",
    "check_disk", "check_etcd", "check_licence", "check_memory", "check_ntp", "check_postgres",
    "is_own_address", "ntp_to_unix", "own_addresses", "port_free_check", "run_bounded", "run_check",
    "run_parallel", "skipped", "sntp_query", "unix_to_ntp",
]
