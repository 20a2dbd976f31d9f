"""``manage.py preflight``: the same catalogue at the console, a table, exit codes
0 (all passed), 1 (an error fails), 3 (only warnings fail)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from pamportal.jobs.choices import Status
from pamportal.preflight.checks import PORT_ROLES
from pamportal.preflight.models import PreflightRun
from tests.preflight.support import SntpResponder, free_port, write_certificate

pytestmark = pytest.mark.django_db


@pytest.fixture
def node(settings, tmp_path, licensed, fake_etcd, monkeypatch):
    """Settings under which every check can pass on loopback."""
    settings.PAM_NODE_ADDRESS = "127.0.0.1"
    settings.PAM_TLS_CERT = write_certificate(tmp_path / "node.crt")
    settings.PAM_DATA_DIR = tmp_path
    settings.PAM_PREFLIGHT_PORTS = {p: free_port() for p in PORT_ROLES}
    settings.PAM_PREFLIGHT_MIN_CPUS = 1
    settings.PAM_PREFLIGHT_MIN_MEMORY_GIB = 0.01
    settings.PAM_PREFLIGHT_MIN_DISK_FREE_GIB = 0.001
    settings.PAM_PREFLIGHT_PROBE_TIMEOUT = 0.5
    monkeypatch.setenv("PATH", f"{fake_etcd}:/usr/bin:/bin")
    with SntpResponder() as ntp:
        settings.PAM_PREFLIGHT_NTP_SERVERS = [ntp.address]
        yield settings


def preflight(*args) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("preflight", *args, "--skip", "port.5432.reachable", stdout=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)
    return 0, out.getvalue()


def test_all_passing_exits_0_prints_the_table_and_records_the_run(node):
    code, out = preflight()
    assert code == 0, out
    assert out.splitlines()[1].split() == ["check", "severity", "status", "measured", "threshold", "message"]
    assert "clock.ntp-offset" in out and "every check passed" in out
    run = PreflightRun.objects.get()
    assert run.job.status == Status.SUCCEEDED and run.created_by is None


def test_an_error_exits_1_with_the_fix(node):
    node.PAM_PREFLIGHT_ETCD_MIN_VERSION = "99.0.0"
    code, out = preflight()
    assert code == 1, out
    assert "1 error(s) block this node: etcd.binary" in out
    assert "etcd.binary (error): upgrade etcd-server" in out


def test_only_warnings_exit_3_and_are_listed(node):
    node.PAM_PREFLIGHT_MIN_CPUS = 10_000
    code, out = preflight()
    assert code == 3, out
    assert "warning(s) not accepted: hardware.cpu" in out and "hardware.cpu (warning): give this machine" in out


def test_no_record_runs_without_a_job_and_the_address_can_be_given(node):
    code, out = preflight("--no-record", "--address", "nonexistent.invalid")
    assert code == 1 and "address.resolves-to-self" in out and "does not resolve" in out
    assert not PreflightRun.objects.exists()


def test_an_unknown_check_name_is_an_argument_error(node):
    with pytest.raises(CommandError, match="no preflight check named nope") as exc:
        call_command("preflight", "--skip", "nope", stdout=StringIO())
    assert exc.value.returncode == 2


def test_the_real_process_exits_1_on_an_error(tmp_path):
    import os
    import subprocess
    import sys

    from tests.support.node import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("PAM_")}
    env.update(PAM_DATA_DIR=str(tmp_path / "data"), PAM_PREFLIGHT_PROBE_TIMEOUT="0.5",
               PAM_PREFLIGHT_NTP_SERVERS="127.0.0.1:9")
    done = subprocess.run([sys.executable, str(REPO / "manage.py"), "preflight", "--no-record", "--address", "bad_host!"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "address.format" in done.stdout and "error(s) block this node" in done.stderr
