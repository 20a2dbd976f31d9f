"""SIEM forwarding to a real collector: Debian's rsyslogd (imtcp with the GnuTLS stream
driver), started by the test with the configuration the README documents, restarted
in the middle. Every event is written exactly once, in order, with the JSON after the
BOM parsed, HOSTNAME is the wizard's node address, and rsyslog logs no TLS error (the
portal ends each connection with close_notify)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pamportal.audit.models import AuditEvent, SiemCollector
from pamportal.audit.siem import siem_configure, siem_forward
from tests.support.node import free_port, wait_for

from .reports import make_trail
from .test_siem import make_pki

pytestmark = pytest.mark.django_db
REPO = Path(__file__).resolve().parents[2]
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


def readme_config() -> str:
    """The fenced block of the README's "SIEM forwarding" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## SIEM forwarding\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"\n```\n(.*?)\n```\n", section, re.S).group(1)


def listening(port: int) -> bool:
    """From /proc: no connection is made (a bare TCP probe would itself be a TLS error)."""
    want = f"0100007F:{port:04X}"
    for table in ("/proc/net/tcp",):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                return True
    return False


class Rsyslog:
    def __init__(self, work: Path, port: int, ca: Path, cert: Path, key: Path):
        self.work, self.port = work, port
        (work / "spool").mkdir(parents=True, exist_ok=True)
        self.output, self.unparsed, self.log = work / "audit.jsonl", work / "unparsed.log", work / "rsyslogd.log"
        config = readme_config()
        for old, new in [
            ("/etc/rsyslog-tls/ca.pem", str(ca)), ("/etc/rsyslog-tls/collector.crt", str(cert)),
            ("/etc/rsyslog-tls/collector.key", str(key)), ('port="6514"', f'address="127.0.0.1" port="{port}"'),
            ("/var/log/pamportal/audit.jsonl", str(self.output)), ("/var/log/pamportal/unparsed.log", str(self.unparsed)),
        ]:
            assert old in config, old
            config = config.replace(old, new)
        self.conf = work / "rsyslog.conf"
        self.conf.write_text(f'global(workDirectory="{work / "spool"}")\n' + config)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        assert not listening(self.port)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.work / "rsyslogd.pid")],
                                            stdout=log, stderr=subprocess.STDOUT, cwd=self.work)
        deadline = time.monotonic() + 15
        while not listening(self.port):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "rsyslogd did not listen in 15 s\n" + self.log.read_text()
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def events(self) -> list[dict]:
        if not self.output.exists():
            return []
        return [json.loads(line) for line in self.output.read_text(encoding="utf-8").splitlines() if line]


def head() -> int:
    return AuditEvent.objects.order_by("-position").values_list("position", flat=True).first()


@pytest.fixture
def collector(tmp_path):
    if not os.path.exists(RSYSLOGD) or not Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so").exists() and not \
            list(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")):
        reason = "Debian's rsyslog and rsyslog-gnutls are not installed (tools/system_packages.sh installs them)"
        print(reason)
        pytest.skip(reason)
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_pem, cert, key = make_pki(pki)
    (pki / "ca.pem").write_text(ca_pem)
    server = Rsyslog(tmp_path / "rsyslog", free_port(), pki / "ca.pem", cert, key)
    try:
        yield server, ca_pem
    finally:
        server.stop()


def test_rsyslog_gets_every_event_once_across_a_restart(collector, admin_user, settings):
    from tests.setup.helpers import ADDRESS, through_node

    server, ca_pem = collector
    settings.PAM_NODE_ADDRESS = "localhost"  # what the process started with
    through_node(admin_user)  # the wizard sets the node address
    started = time.monotonic()
    server.start()
    make_trail(5)
    siem_configure(host="127.0.0.1", port=server.port, ca_pem=ca_pem, enabled=True)
    first = siem_forward()
    assert "error" not in first and first["cursor"] == head(), first
    wait_for(lambda: len(server.events()) >= first["cursor"], "the first events")

    server.stop()  # the collector restarts; meanwhile events keep coming
    make_trail(40)
    down = siem_forward()
    assert down["sent"] == 0 and "error" in down and SiemCollector.objects.get().cursor == first["cursor"]
    server.start()
    make_trail(10)
    for _ in range(10):  # bounded; 500 events a batch, so one run sends all
        outcome = siem_forward()
        assert "error" not in outcome, outcome
        if outcome["sent"] == 0:
            break
    last = SiemCollector.objects.get().cursor
    assert last == head() and last >= first["cursor"] + 50
    wait_for(lambda: len(server.events()) >= last, "the events sent after the restart")
    time.sleep(0.5)  # anything written twice would show up by now
    server.stop()
    print(f"rsyslog test took {time.monotonic() - started:.1f}s")

    received = server.events()
    positions = [item["event"]["position"] for item in received]
    assert positions == list(range(1, last + 1))  # every event exactly once, in order
    stored = {e.position: e for e in AuditEvent.objects.filter(position__lte=last)}
    for item in received:  # the JSON after the BOM, parsed by rsyslog, is the event
        event = stored[item["event"]["position"]]
        assert item["event"]["hash"] == event.hash and item["event"]["target"] == event.target
        assert item["host"] == ADDRESS  # the wizard's node address, not "localhost"
    assert not server.unparsed.exists() or server.unparsed.read_text() == ""
    log = server.log.read_text(errors="replace")
    assert "GnuTLS" not in log and "non-properly" not in log and "error" not in log.lower(), log
