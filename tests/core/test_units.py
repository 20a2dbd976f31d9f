"""The systemd units of `manage.py install_units`: systemd accepts them, they run
exactly what `serve` runs, they are hardened; and the etcd cluster token."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from pamportal.cluster import local_etcd
from pamportal.cluster.etcd_process import command_line
from pamportal.core import units
from pamportal.core.management.commands import serve
from pamportal.crypto.ca import certificate_info, cluster_id_of, self_signed_certificate
from tests.support.node import REPO, NodeEnv

USER = "pamportal"
SERVICES = {"web", "worker", "setup-api", "delegation", "etcd"}


def parse_unit(text: str) -> dict[str, list[str]]:
    """``Key`` -> values, over every section (the keys used here are unique to one)."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def install(out: Path, data_dir: Path, *extra: str) -> dict[str, str]:
    stdout = StringIO()
    call_command("install_units", "--data-dir", str(data_dir), "--user", USER, "--output-dir", str(out),
                 *extra, stdout=stdout)
    written = {line.removeprefix("wrote ") for line in stdout.getvalue().splitlines() if line.startswith("wrote ")}
    assert written == {str(path) for path in out.iterdir()}, "install_units prints every file it wrote"
    return {path.name: path.read_text() for path in out.iterdir()}


@pytest.fixture
def node_files(settings, tmp_path):
    """This process's settings pointed at a data dir holding every file the cluster
    processes wait for (certificate, cluster CA, member configuration)."""
    data = tmp_path / "data"
    (data / "tls").mkdir(parents=True)
    (data / "etcd").mkdir()
    settings.PAM_DATA_DIR = data
    settings.PAM_TLS_CERT = data / "tls" / "node.crt"
    settings.PAM_TLS_KEY = data / "tls" / "node.key"
    settings.CELERY_BEAT_SCHEDULE_FILENAME = str(data / "celerybeat-schedule")
    settings.PAM_BIND_ADDRESS = "0.0.0.0"
    settings.PAM_HTTPS_PORT = 443
    cert_pem, key_pem = self_signed_certificate(["127.0.0.1"])
    settings.PAM_TLS_CERT.write_bytes(cert_pem)
    settings.PAM_TLS_KEY.write_bytes(key_pem)
    (data / "tls" / "cluster-ca.crt").write_bytes(cert_pem)
    local_etcd.local_member_configure(address="127.0.0.1")
    return data


def test_systemd_accepts_every_unit(node_files, tmp_path):
    """`systemd-analyze verify`: keys, values, executables and the units they name.
    It exits 0 on unknown keys too, only warning: any output fails the test."""
    out = tmp_path / "units"
    written = install(out, node_files)
    assert {f"pamportal-{name}.service" for name in SERVICES} <= set(written)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(out / name) for name in written)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr)


def test_the_units_run_exactly_what_serve_runs(node_files, tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "etcd_available", lambda: True)
    command = serve.Command()
    ran = {name: (argv, {}) for name, argv in command.commands(2, 2).items()}
    ran |= command.cluster_commands()
    assert set(ran) == SERVICES

    written = install(tmp_path / "units", node_files, "--bind", "0.0.0.0", "--https-port", "443")
    for name, (argv, env) in ran.items():
        unit = parse_unit(written[f"pamportal-{name}.service"])
        assert [shlex.split(line) for line in unit["ExecStart"]] == [argv], name
        environment = dict(line.split("=", 1) for line in unit["Environment"])
        assert environment.items() >= env.items(), name
        assert environment["PAM_DATA_DIR"] == str(node_files), name
    # etcd is started by run_etcd in both, which execs etcd_process.command_line.
    assert ran["etcd"][0][-1] == "run_etcd"


def test_units_for_another_data_dir_name_no_path_of_this_one(node_files, tmp_path):
    other = tmp_path / "elsewhere"
    written = install(tmp_path / "units", other)
    for name, text in written.items():
        assert str(node_files) not in text, name
    web = parse_unit(written["pamportal-web.service"])
    argv = shlex.split(web["ExecStart"][0])
    assert argv[argv.index("--certfile") + 1] == str(other / "tls" / "node.crt")


def test_the_units_are_hardened_and_start_what_exists(node_files, tmp_path):
    written = install(tmp_path / "units", node_files)
    ca, member = node_files / "tls" / "cluster-ca.crt", node_files / "etcd" / "member.json"
    for name in SERVICES:
        unit = parse_unit(written[f"pamportal-{name}.service"])
        for key, value in {"User": USER, "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                           "ReadWritePaths": str(node_files), "PrivateTmp": "yes", "Restart": "on-failure",
                           "RestrictSUIDSGID": "yes", "UMask": "0077", "Environment": "PAM_ENV=production"}.items():
            assert value in unit[key], (name, key)
        # Only the console binds below 1024, and it can bind nothing else privileged.
        caps = ["CAP_NET_BIND_SERVICE"] if name == "web" else [""]
        assert unit["AmbientCapabilities"] == caps and unit["CapabilityBoundingSet"] == caps, name
        wanted = {"setup-api": [str(ca)], "delegation": [str(ca)], "etcd": [str(ca), str(member)]}.get(name)
        assert unit.get("ConditionPathExists") == wanted, name
        # The app's units go with the node's target; the etcd member has a lifecycle of its own.
        assert unit.get("PartOf") == (None if name == "etcd" else ["pamportal.target"]), name
        assert (unit.get("ExecReload") == ["/bin/kill -HUP $MAINPID"]) is (name not in ("worker", "etcd")), name
    # Files appearing start the cluster processes; the certificate changing reloads the listeners.
    assert parse_unit(written["pamportal-cluster.path"])["PathExists"] == [str(ca)]
    assert parse_unit(written["pamportal-etcd.path"])["Unit"] == ["pamportal-etcd.service"]
    assert parse_unit(written["pamportal-certificate.path"])["PathChanged"] == [str(node_files / "tls" / "node.crt")]
    reload = parse_unit(written["pamportal-reload.service"])["ExecStart"][0].split()
    assert reload[:2] == ["/bin/systemctl", "try-reload-or-restart"]
    assert set(reload[2:]) == {"pamportal-web.service", "pamportal-setup-api.service", "pamportal-delegation.service"}
    target = parse_unit(written["pamportal.target"])
    assert target["WantedBy"] == ["multi-user.target"]
    assert set(target["Wants"][0].split()) == {"pamportal-web.service", "pamportal-worker.service", "pamportal-cluster.path",
                                               "pamportal-etcd.path", "pamportal-certificate.path"}
    assert all(not stat.S_IMODE((tmp_path / "units" / n).stat().st_mode) & 0o022 for n in written)


def test_install_units_refuses_root_and_what_systemd_would_rewrite(node_files, tmp_path):
    with pytest.raises(CommandError, match="unprivileged"):
        call_command("install_units", "--data-dir", str(tmp_path), "--user", "root", "--output-dir", str(tmp_path / "u"))
    with pytest.raises(CommandError, match="cannot put"):
        call_command("install_units", "--data-dir", str(tmp_path / "100%"), "--user", USER,
                     "--output-dir", str(tmp_path / "u"))
    assert units.exec_line(["/bin/x", "", "a b"]) == '/bin/x "" "a b"'


def test_the_production_console_defaults_to_443(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAM_", "DJANGO_"))}
    code = "from django.conf import settings; print(settings.PAM_HTTPS_PORT)"
    ports = []
    for extra in ({"PAM_ENV": "production"}, {}):
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
            env={**env, **extra, "PAM_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "pamportal.settings"},
        )
        assert result.returncode == 0, result.stderr
        ports.append(result.stdout.strip().splitlines()[-1])
    assert ports == ["443", "8443"]


def test_run_etcd_execs_the_command_line_of_etcd_process(tmp_path):
    """serve and the etcd unit both run `manage.py run_etcd`: it becomes etcd with the
    command line the cluster tests start members with. A stand-in etcd prints it."""
    env = NodeEnv(tmp_path / "node")
    data = env.data_dir
    (data / "tls").mkdir()
    cert_pem, _ = self_signed_certificate(["127.0.0.1"])
    (data / "tls" / "cluster-ca.crt").write_bytes(cert_pem)
    (data / "etcd").mkdir(mode=0o700)
    member = {"name": "node-127-0-0-41", "address": "127.0.0.41", "initial_cluster": "node-127-0-0-41=https://127.0.0.41:2380",
              "initial_state": "new"}  # written before cluster tokens: none
    (data / "etcd" / "member.json").write_text(json.dumps(member))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "etcd"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv))\n")
    fake.chmod(0o755)
    env.env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    ran = json.loads(env.manage("run_etcd", timeout=60).stdout.strip().splitlines()[-1])
    expected = env.shell(
        "import json; from pamportal.cluster.local_etcd import local_member_config; "
        "from pamportal.cluster.etcd_process import command_line; "
        f"print(json.dumps(command_line(local_member_config(), binary={str(fake)!r})))"
    )
    assert ran == json.loads(expected.strip().splitlines()[-1])
    assert f"--initial-cluster-token={local_etcd.LEGACY_CLUSTER_TOKEN}" in ran
    assert (data / "etcd" / "data").is_dir()


# -- the etcd cluster token ---------------------------------------------------------------

def test_each_cluster_gets_its_own_token_from_its_id(node_files, settings):
    member = local_etcd.local_member_config()
    ca_pem = (node_files / "tls" / "cluster-ca.crt").read_bytes()
    assert member.initial_cluster_token == f"pamportal-{cluster_id_of(certificate_info(ca_pem).sha256)}"
    assert f"--initial-cluster-token={member.initial_cluster_token}" in command_line(member, binary="etcd")
    # Another cluster (another CA), the same address: another token.
    other_pem, _ = self_signed_certificate(["127.0.0.1"])
    (node_files / "tls" / "cluster-ca.crt").write_bytes(other_pem)
    local_etcd.local_member_configure(address="127.0.0.1")
    assert local_etcd.local_member_config().initial_cluster_token not in (member.initial_cluster_token, "pamportal")


def test_a_member_json_without_a_token_keeps_the_old_one(node_files):
    data = json.loads(local_etcd.config_path().read_text())
    del data["cluster_token"]
    local_etcd.config_path().write_text(json.dumps(data))
    assert local_etcd.local_member_config().initial_cluster_token == local_etcd.LEGACY_CLUSTER_TOKEN == "pamportal"
    # A leader whose member is from before hands its cluster's real (old) token over.
    assert local_etcd.handover_cluster_token() == "pamportal"


def test_the_leader_hands_over_its_members_token(node_files):
    token = local_etcd.local_member_config().initial_cluster_token
    assert local_etcd.handover_cluster_token() == token
    local_etcd.local_member_forget()
    assert local_etcd.handover_cluster_token() == token  # derived from the CA again
    with pytest.raises(ValueError):
        local_etcd.local_member_configure(address="127.0.0.1", cluster_token="bad token,x")


def test_a_node_on_its_postgresql_member_gets_a_patroni_unit_as_serve_runs_it(node_files, tmp_path, settings,
                                                                              monkeypatch):
    """database.json makes the node's Patroni member one of its processes: the same
    command line for serve and the unit, as the member's user, its own lifecycle
    (no PartOf), started by a path unit before the console and the worker."""
    from pamportal.replication import process as member_process
    from pamportal.replication.database import DatabaseFile, DatabaseHost, write_database_file
    from pamportal.replication.local import patroni_node_process

    settings.PAM_POSTGRES_BASE = tmp_path / "pg"
    monkeypatch.setenv("PAM_POSTGRES_BASE", str(tmp_path / "pg"))
    write_database_file(node_files, DatabaseFile(hosts=(DatabaseHost(host="127.0.0.1", port=5432),),
                                                 member="node-127-0-0-1"))
    member = patroni_node_process(data_dir=node_files, base=tmp_path / "pg")
    member.requires_files[1].parent.mkdir(parents=True)
    member.requires_files[1].write_text("{}")  # patroni.yml: what the member runs on
    monkeypatch.setattr(serve, "etcd_available", lambda: True)
    command = serve.Command()
    ran = command.cluster_commands()
    assert ran["patroni"][0] == member.argv

    out = tmp_path / "units"
    written = install(out, node_files)
    unit = parse_unit(written["pamportal-patroni.service"])
    assert [shlex.split(line) for line in unit["ExecStart"]] == [member.argv]
    assert unit["User"] == [member.user] and unit["Group"] == [member.user]
    assert "PartOf" not in unit and unit["RemoveIPC"] == ["no"]
    assert unit["ReadWritePaths"] == [str(member.working_dir)] and f"HOME={member.working_dir}" in unit["Environment"]
    assert unit["ConditionPathExists"] == [str(p) for p in member.requires_files]
    path = parse_unit(written["pamportal-patroni.path"])
    assert path["PathExists"] == [str(node_files / "database.json")] and path["Unit"] == ["pamportal-patroni.service"]
    assert "pamportal-patroni.path" in parse_unit(written["pamportal.target"])["Wants"][0].split()
    for name in ("web", "worker"):
        assert "pamportal-patroni.service" in parse_unit(written[f"pamportal-{name}.service"])["After"][0].split()
    if not member_process.patroni_venv().joinpath("bin", "patroni").exists():
        pytest.skip("Patroni's venv is not built here (tools/patroni_env.sh): systemd-analyze would not find it")
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(str(out / n) for n in written)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
