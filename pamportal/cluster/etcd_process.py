"""How one node's etcd member process is configured and started (Debian's
``etcd-server``, 3.4): its URLs, the names its certificate needs, its command line.

One member per node, on the node's address only, with TLS for both client and peer
traffic and certificates from the cluster CA (client certificates required on both).

The join of a follower, in etcd's order:

1. on the leader: ``EtcdClient.member_add([peer_url], learner=True)``;
2. on the follower: ``command_line(MemberConfig(..., initial_cluster=
   initial_cluster_for_join(members, new_member, name), initial_state="existing"))`` —
   the initial cluster lists the existing members *and* the new one;
3. on the leader: ``EtcdClient.member_promote(new_member.id)`` once it has caught up.

A standalone node starts with ``initial_state="new"`` and
``initial_cluster=initial_cluster_entry(name, address)``.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .etcd import EtcdClient, Member

DEBIAN_PACKAGE = "etcd-server"


class EtcdNotInstalled(RuntimeError):
    def __init__(self):
        super().__init__(
            f"the etcd binary was not found on PATH or in /usr/bin; install it with "
            f"`apt-get install {DEBIAN_PACKAGE}` (clustering needs etcd 3.4 or later)"
        )


def etcd_binary() -> str:
    found = shutil.which("etcd") or ("/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None)
    if not found:
        raise EtcdNotInstalled()
    return found


def _host(address: str) -> str:
    """An address as it goes in a URL: IPv6 in brackets."""
    try:
        if ipaddress.ip_address(address.strip("[]")).version == 6:
            return f"[{address.strip('[]')}]"
    except ValueError:
        pass
    return address


def peer_url(address: str, peer_port: int = 2380) -> str:
    return f"https://{_host(address)}:{peer_port}"


def client_url(address: str, client_port: int = 2379) -> str:
    return f"https://{_host(address)}:{client_port}"


def certificate_addresses(address: str) -> list[str]:
    """The IP SANs a node certificate used by etcd needs.

    etcd 3.4 checks a *peer's* client certificate against the source IP of the
    connection (no flag to skip it before 3.5). A member on a loopback alias such as
    127.0.0.12 dials 127.0.0.11 from 127.0.0.1 (lo's primary address), so on one
    machine the certificate must also name 127.0.0.1, or the peer is refused with
    "x509: certificate is valid for 127.0.0.12, not 127.0.0.1" and the new member
    dies with "could not retrieve cluster information from the given URLs".
    """
    names = [address]
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return names
    if ip.is_loopback:
        source = "::1" if ip.version == 6 else "127.0.0.1"
        if str(ip) != source:
            names.append(source)
    return names


def initial_cluster_entry(name: str, address: str, peer_port: int = 2380) -> str:
    return f"{name}={peer_url(address, peer_port)}"


def initial_cluster_for_join(members: Iterable[Member], new_member_id: int, new_name: str) -> str:
    """``--initial-cluster`` for a member just added with ``member_add``: every member
    with each of its peer URLs, the new one under ``new_name`` (as ``etcdctl member
    add`` prints it). ``members`` is the list member_add returned."""
    entries = []
    for m in members:
        name = new_name if m.id == new_member_id else m.name
        for url in m.peer_urls:
            entries.append(f"{name}={url}")
    if not any(e.startswith(f"{new_name}=") for e in entries):
        raise ValueError("the new member is not in the member list")
    return ",".join(entries)


@dataclass(frozen=True, kw_only=True)
class MemberConfig:
    name: str
    address: str
    data_dir: str | Path
    ca_file: str | Path
    cert_file: str | Path
    key_file: str | Path
    initial_cluster: str
    initial_state: Literal["new", "existing"] = "new"
    initial_cluster_token: str = "pamportal"
    client_port: int = 2379
    peer_port: int = 2380

    def __post_init__(self):
        if self.initial_state not in ("new", "existing"):
            raise ValueError(f"initial_state must be 'new' or 'existing', not {self.initial_state!r}")
        if not self.name or "," in self.name or "=" in self.name:
            raise ValueError(f"bad member name {self.name!r}")

    @property
    def client_url(self) -> str:
        return client_url(self.address, self.client_port)

    @property
    def peer_url(self) -> str:
        return peer_url(self.address, self.peer_port)

    def client(self, *, timeout: float = 5.0, cert_file=None, key_file=None) -> EtcdClient:
        """A client for this member alone (using the member's own certificate unless told)."""
        return EtcdClient(
            [self.client_url], str(self.ca_file), str(cert_file or self.cert_file),
            str(key_file or self.key_file), timeout=timeout,
        )


def listen_address(address: str) -> str:
    """etcd binds to IP addresses only: an FQDN node address listens on what it
    resolves to (preflight's address.resolves-to-self made sure that is this node)."""
    host = address.strip("[]")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return socket.gethostbyname(host)


def command_line(cfg: MemberConfig, *, binary: str | None = None) -> list[str]:
    listen = listen_address(cfg.address)
    return [
        binary or etcd_binary(),
        f"--name={cfg.name}",
        f"--data-dir={cfg.data_dir}",
        # client side: this address only, TLS, cluster-CA client certificates only
        f"--listen-client-urls={client_url(listen, cfg.client_port)}",
        f"--advertise-client-urls={cfg.client_url}",
        f"--cert-file={cfg.cert_file}",
        f"--key-file={cfg.key_file}",
        f"--trusted-ca-file={cfg.ca_file}",
        "--client-cert-auth=true",
        # peer side, the same rules
        f"--listen-peer-urls={peer_url(listen, cfg.peer_port)}",
        f"--initial-advertise-peer-urls={cfg.peer_url}",
        f"--peer-cert-file={cfg.cert_file}",
        f"--peer-key-file={cfg.key_file}",
        f"--peer-trusted-ca-file={cfg.ca_file}",
        "--peer-client-cert-auth=true",
        # bootstrap
        f"--initial-cluster={cfg.initial_cluster}",
        f"--initial-cluster-state={cfg.initial_state}",
        f"--initial-cluster-token={cfg.initial_cluster_token}",
        # refuse reconfigurations that could lose quorum (default, stated anyway)
        "--strict-reconfig-check=true",
        "--enable-v2=false",
        "--logger=zap",
        "--log-outputs=stderr",
    ]
