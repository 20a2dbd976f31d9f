"""The Patroni configuration a node's member gets: TLS on every connection, certificate
authentication on the network, synchronous replication, the node's own ports and
address."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pamportal.replication import config, process
from pamportal.replication.config import FailoverTiming, MemberSpec, TLSFiles

TLS = TLSFiles(ca_file=Path("/m/tls/ca.crt"), cert_file=Path("/m/tls/node.crt"), key_file=Path("/m/tls/node.key"))


def spec(**overrides) -> MemberSpec:
    values = dict(
        cluster_id="6b1f0c3e-1d2a-4c5b-9e8f-0a1b2c3d4e5f", name="node1", address="127.0.0.51",
        etcd_hosts=("127.0.0.51:2379", "127.0.0.52:2379"), tls=TLS, data_dir=Path("/m/data"),
        socket_dir=Path("/m/run"), pgpass=Path("/m/pgpass"), postgres_port=5432, patroni_port=8008,
    )
    values.update(overrides)
    return MemberSpec(**values)


def test_network_access_is_tls_with_certificates_only():
    cfg = config.patroni_config(spec())
    hba = cfg["postgresql"]["pg_hba"]
    network = [line.split() for line in hba if not line.startswith("local")]
    assert network, hba
    for fields in network:
        kind, method = fields[0], fields[4]
        assert method != "trust" and method not in ("md5", "password", "scram-sha-256"), fields
        # every accepted network line is TLS with a certificate; the rest is an explicit reject
        assert (kind == "hostssl" and method == "cert") or method == "reject", fields
        if method == "cert":
            assert fields[5] == f"map={config.CERT_MAP}"
    assert not any("trust" in line for line in hba)
    # the superuser only through the private socket, as its own OS user
    assert hba[0].split() == ["local", "all", "postgres", "peer"]
    assert {line.split()[2] for line in hba if line.startswith("hostssl")} == {
        config.REPLICATION_USER, config.REWIND_USER, config.APP_USER}
    assert cfg["postgresql"]["pg_ident"] == [
        f"{config.CERT_MAP}  /^.+$  {role}" for role in ("replicator", "rewind", "pamportal")]


def test_postgres_serves_tls_with_the_node_certificate():
    params = config.patroni_config(spec())["postgresql"]["parameters"]
    assert params["ssl"] == "on"
    assert params["ssl_cert_file"] == "/m/tls/node.crt" and params["ssl_key_file"] == "/m/tls/node.key"
    assert params["ssl_ca_file"] == "/m/tls/ca.crt"
    assert params["unix_socket_directories"] == "/m/run"  # never /var/run/postgresql
    assert "ssl_crl_file" not in params
    with_crl = TLSFiles(ca_file=TLS.ca_file, cert_file=TLS.cert_file, key_file=TLS.key_file,
                        crl_file=Path("/m/tls/ca.crl"))
    cfg = config.patroni_config(spec(tls=with_crl))
    assert cfg["postgresql"]["parameters"]["ssl_crl_file"] == "/m/tls/ca.crl"
    assert cfg["postgresql"]["authentication"]["replication"]["sslcrl"] == "/m/tls/ca.crl"


def test_replication_and_rewind_log_in_with_the_node_certificate():
    auth = config.patroni_config(spec())["postgresql"]["authentication"]
    for role, user in (("replication", "replicator"), ("rewind", "rewind")):
        assert auth[role] == {"username": user, "sslmode": "verify-full", "sslcert": "/m/tls/node.crt",
                              "sslkey": "/m/tls/node.key", "sslrootcert": "/m/tls/ca.crt"}
        assert "password" not in auth[role]
    assert auth["superuser"] == {"username": "postgres"}


def test_synchronous_replication_and_fast_failover_are_bootstrapped():
    dcs = config.patroni_config(spec())["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is False
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (20, 2, 5)
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]
    pg = dcs["postgresql"]
    assert pg["use_pg_rewind"] is True
    assert pg["parameters"]["wal_level"] == "replica" and pg["parameters"]["hot_standby"] == "on"
    assert pg["parameters"]["wal_log_hints"] == "on" and pg["parameters"]["max_wal_senders"] >= 3


def test_ports_and_addresses_are_the_nodes():
    cfg = config.patroni_config(spec(postgres_port=15432, patroni_port=18008))
    assert cfg["scope"] == "6b1f0c3e-1d2a-4c5b-9e8f-0a1b2c3d4e5f" and cfg["name"] == "node1"
    assert cfg["postgresql"]["listen"] == "127.0.0.51:15432"
    assert cfg["postgresql"]["connect_address"] == "127.0.0.51:15432"
    api = cfg["restapi"]
    assert api["listen"] == "127.0.0.51:18008" and api["connect_address"] == "127.0.0.51:18008"
    assert api["verify_client"] == "required"
    assert (api["certfile"], api["keyfile"], api["cafile"]) == ("/m/tls/node.crt", "/m/tls/node.key", "/m/tls/ca.crt")
    assert cfg["ctl"]["certfile"] == "/m/tls/node.crt" and cfg["ctl"]["insecure"] is False
    etcd = cfg["etcd3"]
    assert etcd["protocol"] == "https" and etcd["hosts"] == ["127.0.0.51:2379", "127.0.0.52:2379"]
    assert (etcd["cacert"], etcd["cert"], etcd["key"]) == ("/m/tls/ca.crt", "/m/tls/node.crt", "/m/tls/node.key")
    assert config.patroni_config(spec())["postgresql"]["listen"] == "127.0.0.51:5432"
    assert spec(address="::1").api_url == "https://[::1]:8008"


def test_render_is_yaml_patroni_reads():
    text = config.render(config.patroni_config(spec()))
    assert json.loads(text)["name"] == "node1"  # JSON is YAML's flow style
    # and PyYAML in Patroni's own environment reads it the same
    python = process.patroni_venv() / "bin" / "python"
    if not python.exists():
        pytest.skip("Patroni's environment is not built (tools/patroni_env.sh)")
    out = subprocess.run([str(python), "-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"],
                         input=text, capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(out.stdout) == json.loads(text)


def test_post_bootstrap_creates_the_application_role_without_password():
    command = config.post_bootstrap_command(spec())
    assert command.startswith("/usr/lib/postgresql/15/bin/psql ")
    assert "CREATE ROLE pamportal LOGIN CREATEDB'" in command and "PASSWORD" not in command
    assert "SUPERUSER" not in command
    assert "CREATE DATABASE pamportal OWNER pamportal" in command


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": "no spaces"},
        {"name": ""},
        {"cluster_id": ""},
        {"etcd_hosts": ()},
        {"etcd_hosts": ("https://127.0.0.51:2379",)},
        {"socket_dir": Path("/" + "x" * 120)},
    ],
)
def test_bad_member_specs_are_refused(overrides):
    with pytest.raises(ValueError):
        spec(**overrides)


def test_timing_rules():
    FailoverTiming(ttl=20, loop_wait=2, retry_timeout=9)
    with pytest.raises(ValueError, match="refuses a TTL"):
        FailoverTiming(ttl=10)
    with pytest.raises(ValueError, match="demote before its key expires"):
        FailoverTiming(ttl=20, loop_wait=5, retry_timeout=8)


def test_a_joining_member_is_never_the_synchronous_standby_until_serve_runs_it():
    """The join runs the member only to make it a replica, then stops it: tagged nosync,
    stopping it never holds the primary's commits; serve's configuration has no such tag."""
    assert config.patroni_config(spec(nosync=True))["tags"]["nosync"] is True
    assert config.patroni_config(spec())["tags"]["nosync"] is False
