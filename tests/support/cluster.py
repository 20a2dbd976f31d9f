"""Driving real nodes through the services, as the console's pages would, for the
multi-node tests: each call runs inside the node's own Django (``NodeEnv.shell``)."""

from __future__ import annotations

import json
import socket
import subprocess
import textwrap
from pathlib import Path

from tests.support.node import NodeEnv, start_node, wait_for

PASSWORD = "a long and unusual passphrase 42"


def etcdctl_members(data_dir: Path, endpoint: str) -> list[dict]:
    """``etcdctl member list`` against the member at ``endpoint``, with the node's own
    cluster certificates (a test looks at etcd as an operator would)."""
    tls = data_dir / "tls"
    result = subprocess.run(
        ["etcdctl", f"--endpoints=https://{endpoint}:2379", f"--cacert={tls / 'cluster-ca.crt'}",
         f"--cert={tls / 'node.crt'}", f"--key={tls / 'node.key'}", "member", "list", "-w", "json"],
        capture_output=True, text=True, timeout=20, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["members"]


def port_free(host: str, port: int) -> bool:
    """Free as a server sees it: connections of an earlier test in TIME_WAIT do not count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def cluster_node(tmp_path, address: str, ntp_server: str) -> NodeEnv:
    """A node on its own loopback address with the standard cluster ports and
    thresholds a test machine meets (the checks themselves are tested elsewhere)."""
    for port in (2379, 2380, 2390, 2391):
        # An earlier test's member may still be shutting down.
        wait_for(lambda: port_free(address, port), timeout=30, what=f"port {port} on {address} to be free")
    return NodeEnv(
        tmp_path / address,
        PAM_NODE_ADDRESS=address,
        PAM_PREFLIGHT_MIN_CPUS="1",
        PAM_PREFLIGHT_MIN_MEMORY_GIB="0.5",
        PAM_PREFLIGHT_MIN_DISK_FREE_GIB="0.1",
        PAM_PREFLIGHT_NTP_SERVERS=ntp_server,
        PAM_PREFLIGHT_PROBE_TIMEOUT="1",
        PAM_JOB_LEASE_SECONDS="20",
        PAM_JOB_REAPER_INTERVAL="2",
        PAM_JOIN_WAIT_SECONDS="60",
    )


def run(env: NodeEnv, code: str) -> dict:
    """Run ``code`` (which sets ``result``) in the node and return ``result`` as JSON."""
    program = "import json\nresult = None\n" + textwrap.dedent(code) + "\nprint('RESULT=' + json.dumps(result, default=str))\n"
    out = env.shell(program, timeout=180)
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT=")][-1]
    return json.loads(line[len("RESULT="):])


USERS = """
from django.contrib.auth import get_user_model
from pamportal.accounts.models import TOTPDevice
from django_otp.oath import TOTP
from pamportal.accounts.roles import Role
User = get_user_model()

def user(name, role):
    found = User.objects.filter(username=name).first()
    if found:
        return found
    made = User.objects.create_user(username=name, password=%r, role=role)
    TOTPDevice.objects.create(user=made, name="phone", confirmed=True)
    return made

def code(u, offset=0):
    d = TOTPDevice.objects.get(user=u)
    t = TOTP(d.bin_key, d.step, d.t0, d.digits, d.drift)
    t.time = t.time + offset * d.step
    return f"{t.token():06d}"
""" % PASSWORD


def start(env: NodeEnv, address: str) -> str:
    base = start_node(env, host=address, port=8443)
    run(env, USERS + "user('admin', Role.ADMINISTRATOR)\nresult = True")
    return base


def finalise_leader(env: NodeEnv, address: str, ntp_server: str) -> str:
    """The leader's wizard through the services: address, a real preflight run on the
    node's worker, licence, MEK, finalise. Returns the MEK as an operator copies it."""
    run(env, USERS + f"""
from pamportal.setup import wizard as s
admin = user('admin', Role.ADMINISTRATOR)
s.setup_node_set(user=admin, address={address!r}, ntp_servers=[{ntp_server!r}])
s.setup_preflight_start(user=admin)
result = True
""")

    def preflight_done():
        return run(env, """
from pamportal.preflight.selectors import preflight_latest
from pamportal.jobs.models import Job
run = preflight_latest()
result = Job.objects.get(pk=run.job_id).is_terminal
""")

    wait_for(preflight_done, timeout=60, what="the leader's preflight run")
    return run(env, USERS + """
from datetime import timedelta
from django.utils import timezone
from pamportal.crypto import mek
from pamportal.crypto.licence import mint
from pamportal.licensing.services import licence_install
from pamportal.nodes import keys, keystore
from pamportal.preflight import services as ps
from pamportal.preflight.selectors import preflight_blocking, preflight_latest
from pamportal.setup import wizard as s
admin = user('admin', Role.ADMINISTRATOR)
run = preflight_latest()
for outcome in preflight_blocking(run):
    # Only warnings can be accepted; an error here fails the test with its message.
    assert outcome.severity == "warning", (outcome.check_id, outcome.status, outcome.message)
    ps.preflight_warning_accept(outcome_id=outcome.pk, user=admin, reason="test machine: accepted for this test")
s.setup_preflight_pass(user=admin)
now = timezone.now()
licence_install(data=mint(customer="Cluster test", edition="enterprise", max_nodes=3,
                          not_before=now - timedelta(days=1), not_after=now + timedelta(days=365)), user=admin)
s.setup_licence_done(user=admin)
keys.mek_generate(user=admin)
keys.mek_reveal(user=admin)
key = mek.encode(keystore.mek_load())
assert keys.mek_confirm(user=admin, typed=key).ok
s.setup_finalise(user=admin)
result = key
""")
