"""Preflight thresholds and the default context, from settings, then the environment.

Each value is read as ``settings.PAM_PREFLIGHT_<NAME>`` if settings define it, else the
environment variable of the same name, else the production-appliance default below.
Read at call time, so tests can change them with pytest-django's ``settings`` fixture.

    PAM_PREFLIGHT_MIN_CPUS               4      (warning)
    PAM_PREFLIGHT_MIN_MEMORY_GIB         16     (warning)
    PAM_PREFLIGHT_MIN_DISK_FREE_GIB      40     (error) free space under the data dir
    PAM_PREFLIGHT_NTP_WARN_SECONDS       0.5    |clock offset| that warns
    PAM_PREFLIGHT_NTP_ERROR_SECONDS      1.0    |clock offset| that blocks: two nodes each
                                                within 1 s are within the 2 s the cluster allows
    PAM_PREFLIGHT_NTP_SERVERS            "pool.ntp.org" (comma separated; host or host:port)
    PAM_PREFLIGHT_CERT_MIN_DAYS          30     (warning below, error once expired)
    PAM_PREFLIGHT_ETCD_MIN_VERSION       "3.4.0"
    PAM_PREFLIGHT_PROBE_TIMEOUT          3.0    seconds, per network probe
    PAM_PREFLIGHT_COMMAND_TIMEOUT        5.0    seconds, per command (etcd --version)
    PAM_PREFLIGHT_ACCEPT_REASON_MIN      10     characters in a warning's acceptance reason
    PAM_PREFLIGHT_PORTS                  {"443": PAM_HTTPS_PORT, "9002": 9002, "2380": 2380,
                                          "2390": 2390, "2391": 2391, "8008": 8008}; each also from
                                          PAM_CLIENT_PORT, PAM_ETCD_PEER_PORT,
                                          PAM_SETUP_API_PORT, PAM_DELEGATION_API_PORT, PAM_PATRONI_PORT
"""

from __future__ import annotations

from typing import Any, Callable

from django.conf import settings

from pamportal.core.addresses import ntp_servers_parse
from pamportal.core.config import setting
from pamportal.replication.database import FOLLOWING_ENGINE

from .checks import PreflightContext, Thresholds

_DEFAULTS = Thresholds()


def _read(name: str, default: Any, kind: Callable[[Any], Any]) -> Any:
    return setting(f"PAM_PREFLIGHT_{name}", default, kind)


def _servers(value: Any) -> tuple[str, ...]:
    """NTP servers (text, or a list of them) by the one rule; none is allowed here (the
    NTP check then warns that the clock cannot be checked)."""
    text = value if isinstance(value, str) else ",".join(str(server) for server in value)
    return tuple(ntp_servers_parse(text)) if text.strip(" ,\n\t") else ()


def thresholds() -> Thresholds:
    return Thresholds(
        min_cpus=_read("MIN_CPUS", _DEFAULTS.min_cpus, int),
        min_memory_gib=_read("MIN_MEMORY_GIB", _DEFAULTS.min_memory_gib, float),
        min_disk_free_gib=_read("MIN_DISK_FREE_GIB", _DEFAULTS.min_disk_free_gib, float),
        ntp_warn_seconds=_read("NTP_WARN_SECONDS", _DEFAULTS.ntp_warn_seconds, float),
        ntp_error_seconds=_read("NTP_ERROR_SECONDS", _DEFAULTS.ntp_error_seconds, float),
        cert_min_days=_read("CERT_MIN_DAYS", _DEFAULTS.cert_min_days, int),
        etcd_min_version=_read("ETCD_MIN_VERSION", _DEFAULTS.etcd_min_version, str),
        probe_timeout=_read("PROBE_TIMEOUT", _DEFAULTS.probe_timeout, float),
        command_timeout=_read("COMMAND_TIMEOUT", _DEFAULTS.command_timeout, float),
    )


def accept_reason_min() -> int:
    return _read("ACCEPT_REASON_MIN", 10, int)


def ntp_servers() -> tuple[str, ...]:
    return _read("NTP_SERVERS", ("pool.ntp.org",), _servers)


def ports() -> dict[str, int]:
    found = {
        "443": setting("PAM_HTTPS_PORT", 443, int),
        "9002": setting("PAM_CLIENT_PORT", 9002, int),
        "2380": setting("PAM_ETCD_PEER_PORT", 2380, int),
        "2390": setting("PAM_SETUP_API_PORT", 2390, int),
        "2391": setting("PAM_DELEGATION_API_PORT", 2391, int),
        "8008": setting("PAM_PATRONI_PORT", 8008, int),
    }
    override = _read("PORTS", {}, lambda v: {str(k): int(p) for k, p in dict(v).items()})
    return {**found, **override}


def _postgres(db: dict | None = None) -> tuple[str, int]:
    db = settings.DATABASES["default"] if db is None else db
    engine = db.get("ENGINE", "")
    # Django's PostgreSQL backend, or ours that follows database.json's member list.
    if "postgresql" not in engine and engine != FOLLOWING_ENGINE:
        return "", 5432
    # libpq multi-host (database.json: "a,b" and "5432,5432"): the first member listed.
    host = str(db.get("HOST") or "127.0.0.1").split(",")[0].strip() or "127.0.0.1"
    port = str(db.get("PORT") or 5432).split(",")[0].strip() or "5432"
    return host, int(port)


def context_default(**overrides: Any) -> PreflightContext:
    """The context for this node from its settings; ``overrides`` replace fields
    (the setup wizard passes the address and NTP servers the operator typed)."""
    host, port = _postgres()
    values: dict[str, Any] = dict(
        address=settings.PAM_NODE_ADDRESS,
        ports=ports(),
        ntp_servers=ntp_servers(),
        data_dir=str(settings.PAM_DATA_DIR),
        certificate_path=str(settings.PAM_TLS_CERT),
        postgres_host=host,
        postgres_port=port,
        thresholds=thresholds(),
    )
    values.update(overrides)
    if isinstance(values.get("ntp_servers"), (list, str)):
        values["ntp_servers"] = _servers(values["ntp_servers"])
    if "skip" in values:
        values["skip"] = tuple(values["skip"])
    return PreflightContext(**values)
