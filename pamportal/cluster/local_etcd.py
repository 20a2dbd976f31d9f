"""This node's own etcd member: the configuration file ``serve`` starts it from.

Finalising a standalone node writes a one-member configuration (state "new"); a
follower writes one from the leader's handover (state "existing"). ``serve`` (or the
``pamportal-etcd`` unit) starts etcd once the file exists, through ``manage.py
run_etcd``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from django.conf import settings

from pamportal.core.files import write_private
from pamportal.crypto.ca import certificate_info, cluster_id_of
from pamportal.nodes.services import ca_cert_path

from .etcd_process import MemberConfig, initial_cluster_entry


def etcd_dir() -> Path:
    return Path(settings.PAM_DATA_DIR) / "etcd"


def config_path() -> Path:
    return etcd_dir() / "member.json"


def member_name(address: str) -> str:
    """etcd member names: the address with anything but letters and digits as '-'."""
    return "node-" + re.sub(r"[^A-Za-z0-9]+", "-", address).strip("-")


# What every cluster used before tokens were derived from the cluster id: the token of
# a member.json written then (one without "cluster_token"), and of a leader that hands
# none over. A member already bootstrapped ignores the token (its data dir has the
# cluster id), and a joining member takes the cluster's ids from its peers.
LEGACY_CLUSTER_TOKEN = "pamportal"


def cluster_token_for(cluster_id: str) -> str:
    """``--initial-cluster-token`` of a cluster: etcd derives the cluster id and the
    first member ids from the token and the peer URLs, so one token for every cluster
    gave two clusters bootstrapped on the same address the same ids."""
    return f"pamportal-{cluster_id}"


def own_cluster_token() -> str:
    """The token of the cluster whose CA is in this node's data dir."""
    return cluster_token_for(cluster_id_of(certificate_info(ca_cert_path().read_bytes()).sha256))


def local_member_configure(*, address: str, name: str | None = None, initial_cluster: str | None = None,
                           initial_state: str = "new", cluster_token: str | None = None) -> Path:
    """Write (atomically) the configuration of this node's member. A joining member
    takes the name the leader registered it under, and the cluster's token from the
    leader; a new one derives it from the cluster CA already in the data dir."""
    if initial_state not in ("new", "existing"):
        raise ValueError("initial_state is 'new' or 'existing'")
    cluster_token = cluster_token or own_cluster_token()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", cluster_token):
        raise ValueError(f"bad etcd cluster token {cluster_token!r}")
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
        initial_cluster_token=data.get("cluster_token") or LEGACY_CLUSTER_TOKEN,
        client_port=settings.PAM_ETCD_CLIENT_PORT,
        peer_port=settings.PAM_ETCD_PEER_PORT,
    )


def local_member_forget() -> None:
    """Remove this node's member configuration and data (a failed join, a removal)."""
    shutil.rmtree(etcd_dir(), ignore_errors=True)


def handover_cluster_token() -> str:
    """The token the leader hands a joining member: the one its own member runs with."""
    member = local_member_config()
    return member.initial_cluster_token if member is not None else own_cluster_token()


def etcd_available() -> bool:
    return shutil.which("etcd") is not None
