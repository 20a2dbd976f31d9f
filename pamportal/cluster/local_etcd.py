"""This node's own etcd member: the configuration file ``serve`` starts it from.

Finalising a standalone node writes a one-member configuration (state "new"); a
follower writes one from the leader's handover (state "existing"). ``serve`` starts
etcd once the file exists and stops it with the node, so the member's lifetime is
the node's.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from django.conf import settings

from pamportal.core.files import write_private
from pamportal.nodes.services import ca_cert_path

from .etcd_process import MemberConfig, initial_cluster_entry


def etcd_dir() -> Path:
    return Path(settings.PAM_DATA_DIR) / "etcd"


def config_path() -> Path:
    return etcd_dir() / "member.json"


def member_name(address: str) -> str:
    """etcd member names: the address with anything but letters and digits as '-'."""
    return "node-" + re.sub(r"[^A-Za-z0-9]+", "-", address).strip("-")


def local_member_configure(*, address: str, name: str | None = None, initial_cluster: str | None = None,
                           initial_state: str = "new", cluster_token: str = "pamportal") -> Path:
    """Write (atomically) the configuration of this node's member. A joining member
    takes the name the leader registered it under."""
    if initial_state not in ("new", "existing"):
        raise ValueError("initial_state is 'new' or 'existing'")
    name = name or member_name(address)
    initial_cluster = initial_cluster or initial_cluster_entry(name, address, settings.PAM_ETCD_PEER_PORT)
    etcd_dir().mkdir(mode=0o700, exist_ok=True)
    data = {
        "name": name,
        "address": address,
        "initial_cluster": initial_cluster,
        "initial_state": initial_state,
        "cluster_token": cluster_token,
    }
    write_private(config_path(), json.dumps(data, indent=2).encode())
    return config_path()


def local_member_config() -> MemberConfig | None:
    """The member configuration, or None while this node has no member."""
    try:
        data = json.loads(config_path().read_text())
    except (FileNotFoundError, ValueError):
        return None
    return MemberConfig(
        name=data["name"],
        address=data["address"],
        data_dir=etcd_dir() / "data",
        ca_file=ca_cert_path(),
        cert_file=settings.PAM_TLS_CERT,
        key_file=settings.PAM_TLS_KEY,
        initial_cluster=data["initial_cluster"],
        initial_state=data["initial_state"],
        initial_cluster_token=data["cluster_token"],
        client_port=settings.PAM_ETCD_CLIENT_PORT,
        peer_port=settings.PAM_ETCD_PEER_PORT,
    )


def local_member_forget() -> None:
    """Remove this node's member configuration and data (a failed join, a removal)."""
    shutil.rmtree(etcd_dir(), ignore_errors=True)


def etcd_available() -> bool:
    return shutil.which("etcd") is not None
