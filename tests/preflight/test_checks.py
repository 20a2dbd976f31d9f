"""Each check passes and fails on a real condition: held ports, a skewed SNTP server, an
unresolvable name, an expired certificate, thresholds above and below this machine."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from dataclasses import replace
from types import SimpleNamespace

import psutil
import pytest

from pamportal.preflight import checks
from pamportal.preflight.checks import BY_ID, CATALOGUE, CheckStatus, Severity, run_check, run_parallel
from tests.preflight.support import (
    SntpResponder,
    context,
    expired_certificate,
    held_port,
    silent_udp,
    write_certificate,
)

PASS, FAIL, ERROR = CheckStatus.PASS, CheckStatus.FAIL, CheckStatus.ERROR


def run(check_id, ctx):
    return run_check(BY_ID[check_id], ctx)


def test_catalogue_has_every_check_the_issue_names_with_sane_rules():
    ids = [c.id for c in CATALOGUE]
    assert ids == list(dict.fromkeys(ids))
    for wanted in ("hardware.cpu", "hardware.memory", "disk.data-dir", "port.443.free", "port.9002.free",
                   "port.2380.free", "port.2390.free", "port.2391.free", "port.8008.free", "port.5432.reachable", "address.format",
                   "address.resolves-to-self", "clock.ntp-offset", "tls.certificate-validity", "etcd.binary",
                   "licence.valid"):
        assert wanted in BY_ID
    for never in ("etcd.binary", "licence.valid", "address.format", "disk.data-dir"):
        assert BY_ID[never].can_accept is False
    failed_error = checks.CheckResult(status=FAIL, severity=Severity.ERROR)
    failed_warning = checks.CheckResult(status=FAIL, severity=Severity.WARNING)
    assert not BY_ID["clock.ntp-offset"].acceptable(failed_error)  # an error is never acceptable
    assert BY_ID["clock.ntp-offset"].acceptable(failed_warning)
    assert not BY_ID["etcd.binary"].acceptable(failed_warning)


# --- ports -----------------------------------------------------------------------------
@pytest.mark.parametrize("standard", ["443", "9002", "2380", "2390", "2391", "8008"])
def test_a_port_held_by_the_test_fails_and_passes_once_released(tmp_path, standard):
    ctx = context(tmp_path)
    with held_port("127.0.0.1") as port:
        ctx = replace(ctx, ports={**ctx.ports, standard: port})
        held = run(f"port.{standard}.free", ctx)
        assert held.status == FAIL, held
        assert f"port {port}" in held.message and "in use" in held.message
        assert f"ss -ltnp 'sport = :{port}'" in held.remediation
    released = run(f"port.{standard}.free", ctx)
    assert released.status == PASS, released
    assert f"127.0.0.1:{port} free" == released.measured


def test_a_port_bound_but_not_listening_is_not_free(tmp_path):
    ctx = context(tmp_path)
    with held_port("127.0.0.1", listen=False) as port:
        assert run("port.9002.free", replace(ctx, ports={**ctx.ports, "9002": port})).status == FAIL


def test_a_wildcard_listener_holds_the_port_on_the_node_address(tmp_path):
    ctx = context(tmp_path)
    with held_port("0.0.0.0") as port:
        assert run("port.2380.free", replace(ctx, ports={**ctx.ports, "2380": port})).status == FAIL


def test_the_port_is_checked_on_the_node_address_only(tmp_path):
    ctx = context(tmp_path, address="127.0.0.2")
    with held_port("127.0.0.1") as port:
        result = run("port.2390.free", replace(ctx, ports={**ctx.ports, "2390": port}))
    assert result.status == PASS and result.measured == f"127.0.0.2:{port} free"


def test_postgres_reachable_passes_on_a_listener_and_fails_once_it_is_gone(tmp_path):
    with held_port() as port:
        ok = run("port.5432.reachable", context(tmp_path, postgres_port=port))
    assert ok.status == PASS and ok.measured.startswith("connected in")
    refused = run("port.5432.reachable", context(tmp_path, postgres_port=port))
    assert refused.status == FAIL and "cannot connect to PostgreSQL at 127.0.0.1:" in refused.message
    assert "DATABASE_URL" in refused.remediation
    embedded = run("port.5432.reachable", context(tmp_path))
    assert embedded.status == FAIL and "embedded SQLite" in embedded.message
    assert BY_ID["port.5432.reachable"].result_severity(embedded) == Severity.WARNING


# --- the address ------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["bad_host!", "300.1.1.1", "", "   ", "1.2.3", "-pam.example.com",
                                     "pam..example.com", "localhost", "pam1", "0.0.0.0", "a" * 64 + ".example.com",
                                     "pam.example.123", "[2001:db8::5]", "pam1.example.com."])
def test_address_format_refuses_garbage(tmp_path, address):
    result = run("address.format", context(tmp_path, address=address))
    assert result.status == FAIL and result.message and result.remediation


@pytest.mark.parametrize("address", ["pam1.example.com", "PAM-1.Example.org", "127.0.0.11", "10.0.0.5", "::1",
                                     "2001:db8::5", "xn--bcher-kva.example"])
def test_address_format_accepts_fqdns_and_ips(tmp_path, address):
    assert run("address.format", context(tmp_path, address=address)).status == PASS


def test_an_unresolvable_name_fails_resolves_to_self(tmp_path):
    result = run("address.resolves-to-self", context(tmp_path, address="nonexistent.invalid"))
    assert result.status == FAIL, result
    assert "'nonexistent.invalid' does not resolve" in result.message
    assert "A/AAAA record" in result.remediation and "127.0.0.1" in result.remediation


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1", "127.0.0.11"])
def test_loopback_names_and_addresses_resolve_to_self(tmp_path, address):
    result = run("address.resolves-to-self", context(tmp_path, address=address))
    assert result.status == PASS, result


def test_an_address_of_another_machine_fails_resolves_to_self(tmp_path):
    result = run("address.resolves-to-self", context(tmp_path, address="192.0.2.77"))  # TEST-NET-1
    assert result.status == FAIL and "none of which is this machine's" in result.message


def test_a_name_server_that_never_answers_times_out_with_a_clear_message(tmp_path, monkeypatch):
    def stuck(*args, **kwargs):
        time.sleep(2)
        raise socket.gaierror("too late")

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    start = time.monotonic()
    result = run("address.resolves-to-self", context(tmp_path, address="pam1.example.com"))
    assert time.monotonic() - start < 1.5
    assert result.status == ERROR and "did not answer for 'pam1.example.com' within 0.5 s" in result.message


# --- the clock --------------------------------------------------------------------------
def test_an_unskewed_sntp_server_passes(tmp_path):
    with SntpResponder(skew=0.0) as server:
        result = run("clock.ntp-offset", context(tmp_path, ntp=(server.address,)))
    assert result.status == PASS, result
    assert abs(float(result.measured.split()[0])) < 0.1
    assert server.requests == 1


def test_a_server_five_seconds_ahead_fails_as_an_error(tmp_path):
    with SntpResponder(skew=5.0) as server:
        result = run("clock.ntp-offset", context(tmp_path, ntp=(server.address,)))
    assert result.status == FAIL and result.severity == Severity.ERROR, result
    assert 4.8 < float(result.measured.split()[0]) < 5.2  # this clock is 5 s behind the server
    assert "behind" in result.message and "synchronise the clock" in result.remediation
    assert not BY_ID["clock.ntp-offset"].acceptable(result)


def test_a_small_skew_is_an_acceptable_warning(tmp_path):
    with SntpResponder(skew=-0.7) as server:
        result = run("clock.ntp-offset", context(tmp_path, ntp=(server.address,)))
    assert result.status == FAIL and result.severity == Severity.WARNING, result
    assert -0.9 < float(result.measured.split()[0]) < -0.5
    assert BY_ID["clock.ntp-offset"].acceptable(result)


def test_a_silent_ntp_server_times_out_with_a_clear_message(tmp_path):
    with silent_udp() as address:
        start = time.monotonic()
        result = run("clock.ntp-offset", context(tmp_path, ntp=(address,)))
        took = time.monotonic() - start
    assert 0.4 < took < 1.5
    assert result.status == ERROR and result.severity == Severity.WARNING
    assert f"no NTP server answered ({address}: no answer within 0.5 s)" == result.message


def test_every_server_is_asked_at_once_and_the_median_decides(tmp_path):
    with SntpResponder(0.0) as a, SntpResponder(0.05) as b, SntpResponder(30.0) as c, silent_udp() as quiet:
        start = time.monotonic()
        result = run("clock.ntp-offset", context(tmp_path, ntp=(a.address, b.address, c.address, quiet)))
        took = time.monotonic() - start
    assert took < 1.2  # the silent one's timeout once, not added to the others
    assert result.status == PASS, result  # one wild server does not decide
    assert all(s.requests == 1 for s in (a, b, c))
    assert f"not answering: {quiet}" in result.message


def test_an_unsynchronised_server_does_not_count(tmp_path):
    with SntpResponder(0.0, leap=3) as server:
        result = run("clock.ntp-offset", context(tmp_path, ntp=(server.address,)))
    assert result.status == ERROR and "not synchronised" in result.message


def test_no_ntp_servers_is_a_warning(tmp_path):
    result = run("clock.ntp-offset", context(tmp_path, ntp=()))
    assert result.status == FAIL and result.severity == Severity.WARNING


def test_ntp_timestamps_round_trip():
    now = time.time()
    assert abs(checks.ntp_to_unix(checks.unix_to_ntp(now)) - now) < 1e-6


# --- the certificate --------------------------------------------------------------------
def test_an_expired_certificate_fails_and_a_fresh_one_passes(tmp_path):
    ctx = context(tmp_path)
    assert run("tls.certificate-validity", ctx).status == PASS
    expired_certificate(tmp_path / "tls" / "node.crt")
    result = run("tls.certificate-validity", ctx)
    assert result.status == FAIL and result.severity == Severity.ERROR
    assert "expired on" in result.message and "tls_ensure --force" in result.remediation
    write_certificate(tmp_path / "tls" / "node.crt")
    fresh = run("tls.certificate-validity", ctx)
    assert fresh.status == PASS and fresh.measured.startswith(("396 days", "397 days"))


def test_a_certificate_near_its_end_is_a_warning_and_a_missing_one_fails(tmp_path):
    ctx = context(tmp_path)
    write_certificate(tmp_path / "tls" / "node.crt", days=10)
    soon = run("tls.certificate-validity", ctx)
    assert soon.status == FAIL and soon.severity == Severity.WARNING and "expires in" in soon.message
    (tmp_path / "tls" / "node.crt").write_bytes(b"not a certificate")
    assert "is not an X.509 certificate" in run("tls.certificate-validity", ctx).message
    missing = run("tls.certificate-validity", replace(ctx, certificate_path=str(tmp_path / "none.crt")))
    assert missing.status == FAIL and "no node certificate at" in missing.message


# --- hardware and disk --------------------------------------------------------------------
def test_cpu_memory_and_disk_fail_above_the_machine_and_pass_below(tmp_path):
    ctx = context(tmp_path)
    cpus = len(os.sched_getaffinity(0))
    memory = psutil.virtual_memory().total / 2**30
    free = shutil.disk_usage(tmp_path).free / 2**30
    for check_id in ("hardware.cpu", "hardware.memory", "disk.data-dir"):
        assert run(check_id, ctx).status == PASS
    high = ctx.with_thresholds(min_cpus=cpus + 1, min_memory_gib=memory * 2, min_disk_free_gib=free * 2 + 1)
    for check_id in ("hardware.cpu", "hardware.memory", "disk.data-dir"):
        result = run(check_id, high)
        assert result.status == FAIL and result.remediation, result
    assert run("hardware.cpu", high).measured == f"{cpus} CPUs"
    assert BY_ID["disk.data-dir"].result_severity(run("disk.data-dir", high)) == Severity.ERROR


def test_disk_check_on_a_data_dir_not_yet_created_measures_its_parent(tmp_path):
    assert run("disk.data-dir", context(tmp_path, data_dir=str(tmp_path / "not" / "yet"))).status == PASS


# --- software and licence ---------------------------------------------------------------
def test_etcd_missing_from_path_fails_with_the_install_hint(tmp_path):
    result = run("etcd.binary", context(tmp_path, search_path=str(tmp_path)))
    assert result.status == FAIL and result.measured == "not installed"
    assert "apt-get install etcd-server" in result.remediation


def test_etcd_found_reports_its_version_and_an_old_one_fails(tmp_path):
    fake = tmp_path / "bin" / "etcd"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'etcd Version: 3.3.9'\necho 'Git SHA: test'\n")
    fake.chmod(0o755)
    old = run("etcd.binary", context(tmp_path, search_path=str(fake.parent)).with_thresholds(etcd_min_version="3.4.0"))
    assert old.status == FAIL and old.measured == "etcd 3.3.9" and "3.4.0 or later" in old.message
    ok = run("etcd.binary", context(tmp_path, search_path=str(fake.parent)).with_thresholds(etcd_min_version="3.3.0"))
    assert ok.status == PASS and ok.measured == "etcd 3.3.9"


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed here")
def test_the_real_etcd_passes(tmp_path):
    result = run("etcd.binary", context(tmp_path))
    assert result.status == PASS and result.measured.startswith("etcd 3.")


def test_licence_check_reads_the_licensing_selector(tmp_path, monkeypatch):
    import pamportal.licensing.selectors as selectors

    monkeypatch.setattr(selectors, "licence_status",
                        lambda: SimpleNamespace(ok=True, message="Licensed to Test", days_left=200))
    ok = run("licence.valid", context(tmp_path))
    assert ok.status == PASS and ok.measured == "200 days left"
    monkeypatch.setattr(selectors, "licence_status",
                        lambda: SimpleNamespace(ok=False, message="The licence expired on 2020-01-01.", days_left=None))
    bad = run("licence.valid", context(tmp_path))
    assert bad.status == FAIL and bad.message == "The licence expired on 2020-01-01." and "upload" in bad.remediation


def test_licence_check_without_the_licensing_module_says_no_licence(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pamportal.licensing.selectors", None)
    result = run("licence.valid", context(tmp_path))
    assert result.status == FAIL and result.message == "no licence installed"


# --- running the catalogue ---------------------------------------------------------------
def test_a_crashing_check_is_reported_not_raised(tmp_path, monkeypatch):
    check = replace(BY_ID["hardware.cpu"], run=lambda ctx: 1 / 0)
    result = run_check(check, context(tmp_path))
    assert result.status == ERROR and "ZeroDivisionError" in result.message


def test_a_check_stuck_past_its_timeout_is_given_up(tmp_path):
    stuck = replace(BY_ID["hardware.cpu"], run=lambda ctx: time.sleep(3) or checks.CheckResult(status=PASS),
                    timeout=lambda t: 0.2)
    start = time.monotonic()
    results = run_parallel([stuck, BY_ID["address.format"]], context(tmp_path))
    assert time.monotonic() - start < 2.0
    assert results["hardware.cpu"].status == ERROR and "within its 0.2 s timeout" in results["hardware.cpu"].message
    assert results["address.format"].status == PASS


@pytest.mark.django_db
def test_the_whole_catalogue_passes_on_loopback_in_about_the_slowest_check(tmp_path, monkeypatch):
    import pamportal.licensing.selectors as selectors

    monkeypatch.setattr(selectors, "licence_status", lambda: SimpleNamespace(ok=True, message="ok", days_left=99))
    etcd_dir = tmp_path / "bin"
    etcd_dir.mkdir()
    (etcd_dir / "etcd").write_text("#!/bin/sh\necho 'etcd Version: 3.4.23'\n")
    (etcd_dir / "etcd").chmod(0o755)
    seen = []
    with SntpResponder() as server, held_port() as pg:
        ctx = context(tmp_path, ntp=(server.address,), postgres_port=pg, search_path=str(etcd_dir))
        results = run_parallel(CATALOGUE, ctx, on_result=lambda c, r: seen.append(c.id))
    assert {k: v.status for k, v in results.items() if v.status != PASS} == {}
    assert sorted(seen) == sorted(BY_ID)


def test_skipped_checks_do_not_run(tmp_path):
    results = run_parallel([BY_ID["etcd.binary"]], replace(context(tmp_path), skip=("etcd.binary",)))
    assert results["etcd.binary"].status == CheckStatus.SKIPPED


def test_the_context_survives_its_json_snapshot(tmp_path):
    ctx = context(tmp_path, ntp=("a:123", "b"), skip=("licence.valid",))
    assert checks.PreflightContext.from_dict(ctx.to_dict()) == ctx


def test_the_postgres_check_takes_the_first_member_of_a_multi_host_database():
    from pamportal.preflight import conf

    multi = {"ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.11,127.0.0.12", "PORT": "5433,5432"}
    assert conf._postgres(multi) == ("127.0.0.11", 5433)
    assert conf._postgres({"ENGINE": "django.db.backends.postgresql", "HOST": "db", "PORT": ""}) == ("db", 5432)
    assert conf._postgres({"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}) == ("", 5432)
    following = {"ENGINE": "pamportal.replication.backend", "HOST": "127.0.0.12,127.0.0.11", "PORT": "5432,5432"}
    assert conf._postgres(following) == ("127.0.0.12", 5432)
