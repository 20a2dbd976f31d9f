"""Reading Patroni's answers, and the errors of a member that does not answer. The
real API is exercised in test_patroni.py."""

from __future__ import annotations

import pytest

from pamportal.crypto import ca
from pamportal.replication.rest import ClusterView, MemberStatus, PatroniClient, PatroniUnavailable
from tests.cluster.etcd_support import pick_ports

CLUSTER = {
    "members": [
        {"name": "n1", "role": "leader", "state": "running", "api_url": "https://127.0.0.51:8008/patroni",
         "host": "127.0.0.51", "port": 5432, "timeline": 2},
        {"name": "n2", "role": "sync_standby", "state": "streaming", "api_url": "https://127.0.0.52:8008/patroni",
         "host": "127.0.0.52", "port": 5432, "timeline": 2, "lag": 0, "lsn": "0/3000060"},
        {"name": "n3", "role": "replica", "state": "stopped", "api_url": "https://127.0.0.53:8008/patroni",
         "lag": "unknown", "tags": {"nofailover": True}},
    ],
    "pause": True,
}


def test_cluster_view_reads_roles_and_lag():
    view = ClusterView.from_json(CLUSTER)
    assert view.leader.name == "n1" and view.leader.timeline == 2 and view.leader.lag is None
    assert [m.name for m in view.sync_standbys] == ["n2"]
    assert view.member("n2").lag == 0 and view.member("n2").state == "streaming"
    n3 = view.member("n3")
    assert n3.lag is None and n3.port is None and n3.tags == {"nofailover": True} and not n3.is_leader
    assert view.paused and view.member("n4") is None
    assert ClusterView.from_json({"members": []}).leader is None


def test_member_status_reads_replication():
    status = MemberStatus.from_json({
        "state": "running", "role": "primary", "server_version": 150020, "timeline": 1,
        "replication": [{"usename": "replicator", "application_name": "n2", "client_addr": "127.0.0.1",
                         "state": "streaming", "sync_state": "sync", "sync_priority": 1}],
        "patroni": {"version": "4.1.5", "scope": "c", "name": "n1"},
    })
    assert (status.name, status.role, status.server_version, status.sync_standby) == ("n1", "primary", 150020, False)
    assert status.replication[0].sync_state == "sync" and status.replication[0].usename == "replicator"


def test_a_member_that_does_not_answer_is_unavailable(tmp_path):
    issued = ca.create_ca(name="rest test CA")
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(issued.cert_pem)
    (port,) = pick_ports("127.0.0.53", (18008,))  # nothing listens there
    client = PatroniClient(f"https://127.0.0.53:{port}", ca_file=ca_file, cert_file=None, key_file=None, timeout=2)
    with pytest.raises(PatroniUnavailable) as exc:
        client.cluster()
    assert "127.0.0.53" in str(exc.value) and "refused" in str(exc.value).lower()
