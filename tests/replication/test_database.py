"""Which database a node uses (pamportal.replication.database): database.json before
DATABASE_URL before SQLite, libpq multi-host options Django and psycopg accept, and a
database.json that cannot be used refused with its reason, never a silent SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db.backends.postgresql.base import DatabaseWrapper

from pamportal.replication import database, local, process
from pamportal.replication.database import DatabaseFile, DatabaseFileError, DatabaseHost

REPO = Path(__file__).resolve().parents[2]
URL = "postgres://someone:secret@db.example.com:6543/elsewhere"


def tls(tmp_path: Path) -> dict:
    files = {"ca_file": tmp_path / "tls" / "cluster-ca.crt", "cert_file": tmp_path / "tls" / "node.crt",
             "key_file": tmp_path / "tls" / "node.key"}
    files["ca_file"].parent.mkdir(exist_ok=True)
    for path in files.values():
        path.write_text("x")
    return files


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "database.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def good(**changes) -> dict:
    data = {"format": "pamportal-database", "version": 1, "member": "node-127-0-0-54",
            "hosts": [{"host": "127.0.0.54", "port": 5432}, {"host": "node2.example.com", "port": 5433}]}
    data.update(changes)
    return data


def test_without_file_or_url_the_embedded_sqlite(tmp_path):
    db = database.databases(data_dir=tmp_path, database_url=None, **tls(tmp_path))["default"]
    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["NAME"] == str(tmp_path / "pamportal.sqlite3")
    assert db["OPTIONS"]["transaction_mode"] == "IMMEDIATE" and db["CONN_HEALTH_CHECKS"] is True
    assert db["TEST"] == {"NAME": str(tmp_path / "test.sqlite3")}


def test_database_url_without_file(tmp_path):
    db = database.databases(data_dir=tmp_path, database_url=URL, **tls(tmp_path))["default"]
    assert (db["ENGINE"], db["HOST"], db["PORT"], db["NAME"]) == ("django.db.backends.postgresql", "db.example.com",
                                                                   6543, "elsewhere")
    assert db["CONN_HEALTH_CHECKS"] is True  # CONN_MAX_AGE as dj_database_url gives it, as before


def test_database_file_wins_over_url_and_sqlite(tmp_path):
    files = tls(tmp_path)
    write(tmp_path, good())
    db = database.databases(data_dir=tmp_path, database_url=URL, **files)["default"]
    # Django's PostgreSQL backend that re-reads the member list per connection (test_backend.py)
    assert db["ENGINE"] == "pamportal.replication.backend"
    assert db["HOSTS_FILE"] == str(tmp_path / "database.json")
    assert (db["HOST"], db["PORT"], db["NAME"], db["USER"], db["PASSWORD"]) == (
        "127.0.0.54,node2.example.com", "5432,5433", "pamportal", "pamportal", "")
    assert db["OPTIONS"] == {
        "target_session_attrs": "read-write", "sslmode": "verify-full", "sslrootcert": str(files["ca_file"]),
        "sslcert": str(files["cert_file"]), "sslkey": str(files["key_file"]), "connect_timeout": 3,
        "application_name": "pamportal-node-127-0-0-54",
    }
    assert db["CONN_MAX_AGE"] > 0 and db["CONN_HEALTH_CHECKS"] is True


def test_django_hands_the_multi_host_options_to_psycopg(tmp_path):
    write(tmp_path, good(hosts=[{"host": "127.0.0.54", "port": 5432}, {"host": "127.0.0.55", "port": 5433}]))
    db = database.databases(data_dir=tmp_path, database_url=None, **tls(tmp_path))["default"]
    wrapper = DatabaseWrapper({**db, "ATOMIC_REQUESTS": False, "AUTOCOMMIT": True, "TIME_ZONE": None}, alias="probe")
    params = wrapper.get_connection_params()
    assert params["host"] == "127.0.0.54,127.0.0.55" and params["port"] == "5432,5433"
    assert params["target_session_attrs"] == "read-write" and params["sslmode"] == "verify-full"
    assert params["dbname"] == "pamportal" and params["user"] == "pamportal"
    # libpq parses it as two hosts with their ports
    from psycopg.conninfo import conninfo_attempts, conninfo_to_dict, make_conninfo

    libpq = {k: v for k, v in params.items() if k not in ("context", "cursor_factory", "prepare_threshold")}
    attempts = conninfo_attempts(conninfo_to_dict(make_conninfo("", **libpq)))
    assert [(a["host"], a["port"]) for a in attempts] == [("127.0.0.54", "5432"), ("127.0.0.55", "5433")]


def test_ipv6_hosts_go_to_libpq_without_brackets(tmp_path):
    write(tmp_path, good(hosts=[{"host": "[fd00::1]", "port": 5432}]))
    db = database.databases(data_dir=tmp_path, database_url=None, **tls(tmp_path))["default"]
    assert db["HOST"] == "fd00::1"


BROKEN = [
    ("", "the file is empty"),
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (good(format="other"), "format is 'other'"),
    (good(version=2), "version 2 is not supported"),
    (good(hosts=[]), "'hosts' must be a non-empty list"),
    (good(hosts="127.0.0.54:5432"), "'hosts' must be a non-empty list"),
    (good(hosts=[{"host": "127.0.0.54"}]), "is not {\"host\": ..., \"port\": ...}"),
    (good(hosts=[{"host": "127.0.0.54", "port": 0}]), "port 0 is not a TCP port"),
    (good(hosts=[{"host": "127.0.0.54", "port": "5432"}]), "port '5432' is not a TCP port"),
    (good(hosts=[{"host": "127.0.0.54", "port": True}]), "port True is not a TCP port"),
    (good(hosts=[{"host": "a b;host=evil", "port": 5432}]), "is not a host name or IP address"),
    (good(hosts=[{"host": "a,b", "port": 5432}]), "is not a host name or IP address"),
    (good(member="../etc"), "is not a member name"),
    (good(password="x"), "unknown fields ['password']"),
    ("x" * 70000, "larger than"),
]


@pytest.mark.parametrize("content,problem", BROKEN, ids=[p for _c, p in BROKEN])
def test_a_broken_file_is_refused_with_its_reason_not_replaced_by_sqlite(tmp_path, content, problem):
    path = write(tmp_path, content)
    with pytest.raises(DatabaseFileError) as refused:
        database.databases(data_dir=tmp_path, database_url=None, **tls(tmp_path))
    message = str(refused.value)
    assert problem in message and str(path) in message
    assert "will not start on SQLite" in message


def test_missing_tls_files_are_named(tmp_path):
    files = tls(tmp_path)
    files["key_file"].unlink()
    write(tmp_path, good())
    with pytest.raises(DatabaseFileError, match="the node key it needs to log in, .*node.key, is missing"):
        database.databases(data_dir=tmp_path, database_url=None, **files)


def test_unreadable_file_is_refused(tmp_path):
    path = write(tmp_path, good())
    path.chmod(0)
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    with pytest.raises(DatabaseFileError, match="cannot be read"):
        database.read_database_file(tmp_path)


def test_write_is_private_and_reads_back(tmp_path):
    db = DatabaseFile(hosts=(DatabaseHost(host="127.0.0.54", port=5432),), member="node-127-0-0-54",
                      moved_at="20260101T000000Z", sqlite_kept=str(tmp_path / "pamportal.sqlite3.moved-x"))
    path = database.write_database_file(tmp_path, db)
    assert path.stat().st_mode & 0o777 == 0o600
    assert database.read_database_file(tmp_path) == db
    assert [p.name for p in tmp_path.iterdir()] == ["database.json"]  # no temporary left


def _settings_in_subprocess(data_dir: Path, extra_env: dict | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAM_", "DJANGO_", "DATABASE_URL"))}
    env.update(PAM_DATA_DIR=str(data_dir), DJANGO_SETTINGS_MODULE="pamportal.settings", **(extra_env or {}))
    code = "from django.conf import settings; d = settings.DATABASES['default']; print(d['ENGINE'], d['HOST'])"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


def test_settings_use_the_file_and_stop_on_a_corrupt_one(tmp_path):
    tls(tmp_path)
    write(tmp_path, good())
    ok = _settings_in_subprocess(tmp_path, {"DATABASE_URL": URL})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["pamportal.replication.backend", "127.0.0.54,node2.example.com"]

    write(tmp_path, "{truncated")
    broken = _settings_in_subprocess(tmp_path)
    assert broken.returncode != 0
    assert "DatabaseFileError" in broken.stderr and "not JSON" in broken.stderr
    assert not (tmp_path / "pamportal.sqlite3").exists()  # no empty SQLite made instead


def test_the_supervisor_runs_the_member_only_with_a_database_file(settings, tmp_path):
    settings.PAM_DATA_DIR = tmp_path
    run_as = process.RunAs.for_this_process()
    assert local.patroni_node_process(base=tmp_path / "pg", run_as=run_as) is None
    write(tmp_path, good())
    member = local.patroni_node_process(base=tmp_path / "pg", run_as=run_as)
    config_file = tmp_path / "pg" / "node-127-0-0-54" / "patroni.yml"
    assert member.name == "patroni" and member.user == run_as.user and member.member == "node-127-0-0-54"
    assert member.argv == [str(process.patroni_venv() / "bin" / "patroni"), str(config_file)]
    # and the etcd member's configuration: a node that learnt it was removed stops its member
    assert member.requires_files == (tmp_path / "database.json", config_file, tmp_path / "etcd" / "member.json")
    with pytest.raises(FileNotFoundError, match="patroni.yml"):
        local.node_member_start(member, run_as=run_as)
