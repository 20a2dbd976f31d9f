"""Page-speed benchmark (run on demand, not part of the suite).

    .venv/bin/python bench/pages.py [--seconds 10] [--sessions 20] [--events 3000]

Starts a real node as `make run` does (`manage.py serve` with its default gunicorn
workers over HTTPS, the embedded SQLite database and broker, on 127.0.0.81 (``--host``)
and a free port, in a temporary data dir), finishes setup through the services (address, a real
preflight run on the node's worker against a local SNTP responder, licence, MEK,
finalise), appends a few thousand audit events, and makes N signed-in sessions (an
administrator's session with its verified TOTP device, as after the login form).

Then, page by page, `wrk` drives one keep-alive connection per session for the given
seconds: dashboard, cluster, audit, jobs, preflight, licence, and a static file served
by the same server in the same run as the baseline. Prints p50/p95/p99, requests/s,
each page's p95 against the static file's, and the node's CPU time per request (all
its processes), which stays readable when other work shares the machine. Needs `wrk` (Debian: `apt-get install wrk`).
Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PAGES = [
    ("dashboard", "/"),
    ("cluster", "/cluster/"),
    ("audit", "/audit/"),
    ("jobs", "/jobs/"),
    ("preflight", "/preflight/"),
    ("licence", "/licence/"),
    ("static file", "/static/pamportal/portal.css"),
]

# Each wrk connection sends the cookie of its own session; at the end every thread
# reports its latency percentiles and the count of non-2xx answers.
WRK_SCRIPT = r"""
local cookies = {%(cookies)s}
local threads = {}
local counter = 0

function setup(thread)
    thread:set("first", counter)
    counter = counter + 1
    table.insert(threads, thread)
end

function init(args)
    bad = 0
    calls = 0
end

function request()
    calls = calls + 1
    local cookie = cookies[((first + calls) %% #cookies) + 1]
    return wrk.format("GET", nil, {["Cookie"] = cookie, ["Host"] = "%(host)s"})
end

function response(status, headers, body)
    if status ~= 200 then bad = bad + 1 end
end

function done(summary, latency, requests)
    local b = 0
    for _, t in ipairs(threads) do b = b + t:get("bad") end
    io.write(string.format("RESULT p50=%%d p95=%%d p99=%%d requests=%%d seconds=%%f bad=%%d errors=%%d\n",
        latency:percentile(50), latency:percentile(95), latency:percentile(99),
        summary.requests, summary.duration / 1e6, b,
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
"""


def prepare_node(root: Path, events: int, host: str):
    from tests.preflight.support import SntpResponder
    from tests.support.cluster import USERS, finalise_leader, run
    from tests.support.node import NodeEnv, https_get, passing_preflight_env, start_node, wait_for

    env = NodeEnv(root / "node", **passing_preflight_env())
    # As `make run` does: serve's own defaults for gunicorn and Celery.
    base = start_node(env, host=host, small=False)

    def answers():
        try:
            return https_get(base + "/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    run(env, USERS + "user('admin', Role.ADMINISTRATOR)\nresult = True")
    with SntpResponder(host=sntp_host(host)) as sntp:
        finalise_leader(env, host, sntp.address)
    # Finalising replaces the certificate: serve restarts gunicorn with it.
    wait_for(answers, timeout=60, what="the console after finalise")
    run(env, f"""
from django.db import transaction
from pamportal.audit.actions import AuditAction
from pamportal.audit.services import audit_record
for start in range(0, {events}, 500):
    with transaction.atomic():
        for i in range(start, min(start + 500, {events})):
            audit_record(action=AuditAction.LOGIN_SUCCEEDED, target=f"user:bench{{i % 50}}",
                         details={{"bench": i}}, actor_name=f"bench{{i % 50}}")
result = True
""")
    return env, base


def sntp_host(host: str) -> str:
    """The local SNTP responder's address: the loopback address after the node's."""
    first, last = host.rsplit(".", 1)
    return f"{first}.{int(last) + 1}"


def make_sessions(env, count: int) -> list[str]:
    from tests.support.cluster import USERS, run

    return run(env, USERS + f"""
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from pamportal.accounts.models import TOTPDevice
admin = user('admin', Role.ADMINISTRATOR)
device = TOTPDevice.objects.get(user=admin)
result = []
for _ in range({count}):
    s = SessionStore()
    s[SESSION_KEY] = str(admin.pk)
    s[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    s[HASH_SESSION_KEY] = admin.get_session_auth_hash()
    s["otp_device_id"] = device.persistent_id
    s.create()
    result.append(s.session_key)
""")


def node_cpu_seconds(root: int) -> float:
    """CPU time (user + system) of the node's live processes (serve and everything it
    started: gunicorn, Celery, etcd), so a page's cost can be read on a busy machine."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the name: state, ppid, ...
        except OSError:
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime+stime
    wanted = {root}
    for _ in range(4):  # serve -> gunicorn master -> workers; Celery -> pool
        wanted |= {pid for pid, (ppid, _) in stats.items() if ppid in wanted}
    total = sum(stats[pid][1] for pid in wanted if pid in stats)
    return total / os.sysconf("SC_CLK_TCK")


def drive(base: str, path: str, cookies: list[str], seconds: int, script_dir: Path, serve_pid: int) -> dict:
    host = base.removeprefix("https://")
    lua = WRK_SCRIPT % {
        "cookies": ", ".join(f'"pamportal_session={c}"' for c in cookies),
        "host": host,
    }
    script = script_dir / "wrk.lua"
    script.write_text(lua)
    cpu_before = node_cpu_seconds(serve_pid)
    result = subprocess.run(
        ["wrk", "-t", "2", "-c", str(len(cookies)), "-d", f"{seconds}s", "--timeout", "10s",
         "-s", str(script), base + path],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    cpu = node_cpu_seconds(serve_pid) - cpu_before
    match = re.search(r"RESULT (.*)", result.stdout)
    if not match:
        raise SystemExit(f"wrk failed on {path}:\n{result.stdout}\n{result.stderr}")
    figures = dict(kv.split("=") for kv in match.group(1).split())
    return {
        "p50": int(figures["p50"]) / 1000, "p95": int(figures["p95"]) / 1000, "p99": int(figures["p99"]) / 1000,
        "rps": int(figures["requests"]) / float(figures["seconds"]),
        "bad": int(figures["bad"]), "errors": int(figures["errors"]),
        "cpu_ms": cpu * 1000 / max(1, int(figures["requests"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="seconds per page")
    parser.add_argument("--sessions", type=int, default=20, help="concurrent signed-in sessions")
    parser.add_argument("--events", type=int, default=3000, help="audit events appended before measuring")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load per page first")
    parser.add_argument("--host", default="127.0.0.81",
                        help="loopback address of the node (the SNTP responder takes the next one)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench/pages.py needs wrk (Debian: apt-get install wrk)")
    root = Path(tempfile.mkdtemp(prefix="pam-bench-pages-"))
    # This process only imports helpers; the node has its own data dir and database.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pamportal.settings_test")
    os.environ["PAM_DATA_DIR"] = str(root / "scratch")
    import django

    django.setup()
    env = None
    try:
        env, base = prepare_node(root, args.events, args.host)
        cookies = make_sessions(env, args.sessions)
        serve_pid = env.processes[0].pid
        rows = []
        for name, path in PAGES:
            if args.warmup:
                drive(base, path, cookies, args.warmup, root, serve_pid)
            rows.append((name, path, drive(base, path, cookies, args.seconds, root, serve_pid)))
        static = rows[-1][2]
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"\n{args.sessions} concurrent signed-in sessions, {args.seconds} s per page, "
              f"{args.events} audit events, {os.cpu_count()} CPUs (load average {load} at the end); "
              f"gunicorn over HTTPS, embedded SQLite")
        print(f"{'page':<12} {'path':<30} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>8} "
              f"{'p95/static':>10} {'cpu ms/req':>10} {'non-200':>8}")
        for name, path, r in rows:
            ratio = r["p95"] / static["p95"] if static["p95"] else float("inf")
            print(f"{name:<12} {path:<30} {r['p50']:>8.1f} {r['p95']:>8.1f} {r['p99']:>8.1f} {r['rps']:>8.0f} "
                  f"{ratio:>9.1f}x {r['cpu_ms']:>10.1f} {r['bad'] + r['errors']:>8}")
    finally:
        if env is not None:
            env.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
