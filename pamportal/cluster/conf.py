"""Cluster settings, read at call time: ``settings.PAM_<NAME>`` if settings define it,
else the environment variable of the same name, else the default below.

    PAM_HTTPS_PORT                 the console's port (settings define it)
    PAM_ETCD_CLIENT_PORT           2379
    PAM_ETCD_PEER_PORT             2380
    PAM_SETUP_API_PORT             2390   the cluster setup API (the leader)
    PAM_DELEGATION_API_PORT        2391   the delegation API (every node, mutual TLS)
    PAM_BUNDLE_LIFETIME_HOURS      24     a joining bundle expires after this
    PAM_JOIN_WAIT_SECONDS          120    how long the join waits for the follower's etcd member
    PAM_JOIN_POLL_INTERVAL         1      seconds between the join's looks at the etcd member
    PAM_JOIN_FOLLOW_SECONDS        93600  (26 h) how long a follower follows its join on the leader
    PAM_ETCD_TIMEOUT_SECONDS       5      per etcd request
    PAM_HEARTBEAT_TIMEOUT_SECONDS  3      per delegation heartbeat
    PAM_SETUP_API_MAX_BODY         65536  bytes of a join request
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable

from pamportal.core.config import setting


def _read(name: str, default: Any, kind: Callable[[Any], Any]) -> Any:
    return setting(f"PAM_{name}", default, kind)


def https_port() -> int:
    return _read("HTTPS_PORT", 443, int)


def etcd_client_port() -> int:
    return _read("ETCD_CLIENT_PORT", 2379, int)


def etcd_peer_port() -> int:
    return _read("ETCD_PEER_PORT", 2380, int)


def setup_api_port() -> int:
    return _read("SETUP_API_PORT", 2390, int)


def delegation_api_port() -> int:
    return _read("DELEGATION_API_PORT", 2391, int)


def leader_ports() -> dict[str, int]:
    """The ports a follower needs to reach on the leader, as the bundle carries them."""
    return {
        "https": https_port(),
        "etcd_client": etcd_client_port(),
        "etcd_peer": etcd_peer_port(),
        "setup_api": setup_api_port(),
        "delegation": delegation_api_port(),
    }


def bundle_lifetime() -> timedelta:
    return timedelta(hours=_read("BUNDLE_LIFETIME_HOURS", 24.0, float))


def join_wait_seconds() -> float:
    return _read("JOIN_WAIT_SECONDS", 120.0, float)


def join_poll_interval() -> float:
    return _read("JOIN_POLL_INTERVAL", 1.0, float)


def join_follow_seconds() -> float:
    return _read("JOIN_FOLLOW_SECONDS", 26 * 3600.0, float)


def etcd_timeout() -> float:
    return _read("ETCD_TIMEOUT_SECONDS", 5.0, float)


def heartbeat_timeout() -> float:
    return _read("HEARTBEAT_TIMEOUT_SECONDS", 3.0, float)


def setup_api_max_body() -> int:
    return _read("SETUP_API_MAX_BODY", 64 * 1024, int)
