"""Audit chain benchmark (PostgreSQL only, run on demand, not part of the suite).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pamportal .venv/bin/python bench/audit.py

Creates a database of its own (dropped afterwards) and prints:
  * audit appends per second, 1 writer and 8 writer processes, each append its own
    transaction, against a plain INSERT of an equivalent row per transaction;
  * ``audit_verify`` events per second over 1,000,000 events, against streaming the
    same rows with no hashing.
Aims (issue 2): >= 2,000 appends/s with one writer, >= 200,000 verified events/s.

    .venv/bin/python bench/audit.py --replicated

Instead (no DATABASE_URL needed): the replicated row of issue 11. Two etcd members and
two Patroni-managed PostgreSQL 15 members on 127.0.0.84-85 (tests/replication's Lab:
TLS, cluster-CA certificates, synchronous_mode), Django on them as a moved node is
(``database.json``, libpq multi-host). Audit appends/s, 1 and 8 writer processes, on
r1 alone (single node), then with r2 streaming as its synchronous standby
(``pg_stat_replication.sync_state = 'sync'`` checked before and after), then on r1
alone again: the same primary, the same PostgreSQL settings, the same machine, in the
same run. Aim (issue 11): replicated >= 0.5x single node. Needs etcd, PostgreSQL 15
and Patroni's venv (tools/patroni_env.sh); says which is missing otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PLAIN_TABLE = "bench_plain_event"
PLAIN_INSERT = f"""
INSERT INTO {PLAIN_TABLE} (position, time, actor_id, actor_name, source_ip, request_id,
                           action, target, outcome, details, prev_hash, hash)
VALUES (nextval('bench_plain_seq'), now(), %s, %s, %s, %s, %s, %s, %s, %s, %s, md5(random()::text) || md5(random()::text))
"""


def _django(env: dict[str, str]) -> None:
    os.environ.update(env)
    import django

    django.setup()


def _append_loop(kind: str, count: int) -> tuple[float, float]:
    """``count`` appends, one transaction each; returns (start, end) wall-clock times."""
    from django.db import connection, transaction

    from pamportal.audit.actions import AuditAction
    from pamportal.audit.services import audit_record
    from pamportal.core.context import acting

    details = {"user": "bench", "reason": "benchmark"}
    start = time.time()
    with acting(actor_id=1, actor_name="bench", source_ip="127.0.0.1", request_id="0" * 32):
        if kind == "audit":
            for _ in range(count):
                with transaction.atomic():
                    audit_record(action=AuditAction.LOGIN_SUCCEEDED, target="user:bench", details=details)
        else:
            text = json.dumps(details, sort_keys=True, separators=(",", ":"))
            params = (1, "bench", "127.0.0.1", "0" * 32, "auth.login", "user:bench", "succeeded", text, "0" * 64)
            for _ in range(count):
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(PLAIN_INSERT, params)
    return start, time.time()


def worker_main(args) -> None:
    _django({})
    from django.db import connection

    connection.ensure_connection()
    while time.time() < args.start_at:  # all writers start together, after Django is up
        time.sleep(0.005)
    start, end = _append_loop(args.kind, args.count)
    print(json.dumps({"start": start, "end": end}))


def appends_per_second(env: dict[str, str], kind: str, writers: int, per_writer: int, *,
                       in_process: bool = True) -> float:
    if writers == 1 and in_process:
        start, end = _append_loop(kind, per_writer)
        return per_writer / (end - start)
    start_at = time.time() + 4
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", "--kind", kind, "--count", str(per_writer), "--start-at", str(start_at)],
            env=env, cwd=REPO, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(writers)
    ]
    ends = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"writer failed: {out}")
        ends.append(json.loads(out.strip().splitlines()[-1])["end"])
    return writers * per_writer / (max(ends) - start_at)


def load_chain(conn, count: int) -> None:
    """Append ``count`` valid events after the current head with COPY (inserts are
    allowed; the triggers refuse only changes)."""
    from pamportal.audit import chain

    with conn.cursor() as cur:
        cur.execute("SELECT position, hash FROM audit_audithead WHERE id = 1")
        position, prev = cur.fetchone()
        base = datetime(2026, 1, 1, tzinfo=timezone.utc)
        actions = ("auth.login", "auth.logout", "user.created", "job.started", "job.finished", "auth.access_denied")
        columns = "position, time, actor_id, actor_name, source_ip, request_id, action, target, outcome, details, prev_hash, hash"
        with cur.copy(f"COPY audit_auditevent ({columns}) FROM STDIN") as copy:
            for i in range(position + 1, position + count + 1):
                when = base + timedelta(milliseconds=i)
                action = actions[i % len(actions)]
                outcome = "denied" if action == "auth.access_denied" else "succeeded"
                details = chain.canonical_details({"n": i, "path": "/jobs/"})
                request_id = f"{i:032x}"
                digest = chain.event_hash(i, when, 7, "operator-7", "10.0.0.7", request_id, action, "user:operator-7", outcome, details, prev)
                copy.write_row((i, when, 7, "operator-7", "10.0.0.7", request_id, action, "user:operator-7", outcome, details, prev, digest))
                prev = digest
        cur.execute("UPDATE audit_audithead SET position = %s, hash = %s WHERE id = 1", (position + count, prev))
    conn.commit()


def stream_without_hashing() -> tuple[int, float]:
    from django.db import transaction

    from pamportal.audit.selectors import audit_chain_rows

    started = time.perf_counter()
    with transaction.atomic():
        n = sum(1 for _ in audit_chain_rows())
    return n, time.perf_counter() - started


def main() -> None:
    from tests.support.node import NodeEnv, using_postgres

    if not using_postgres():
        raise SystemExit("bench/audit.py needs DATABASE_URL pointing at PostgreSQL "
                         "(or --replicated: single Patroni member against a synchronous replica)")
    with tempfile.TemporaryDirectory(prefix="pamportal-bench-") as tmp:
        node = NodeEnv(Path(tmp) / "node")
        try:
            print(f"database {node.name} (dropped afterwards)")
            env = dict(node.env)
            _django(env)
            from django.core.management import call_command
            from django.db import connection

            call_command("migrate", interactive=False, verbosity=0)

            with connection.cursor() as cursor:
                cursor.execute(f"CREATE TABLE {PLAIN_TABLE} (LIKE audit_auditevent INCLUDING ALL)")
                cursor.execute("CREATE SEQUENCE bench_plain_seq")

            print("\n== appends (one transaction each)")
            one = 3000
            for writers, per_writer in ((1, one), (8, 1000)):
                plain = appends_per_second(env, "plain", writers, per_writer)
                audit = appends_per_second(env, "audit", writers, per_writer)
                print(
                    f"{writers} writer{'s' if writers > 1 else ' '}: audit_record {audit:8,.0f}/s   "
                    f"plain INSERT {plain:8,.0f}/s   ratio {audit / plain:.2f}"
                )

            print("\n== verification")
            from pamportal.audit.selectors import audit_chain_verify, audit_head

            target = 1_000_000
            existing, _ = audit_head()
            started = time.perf_counter()
            connection.ensure_connection()
            load_chain(connection.connection, target - existing)
            print(f"loaded {target - existing:,} events by COPY in {time.perf_counter() - started:.1f}s")
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE audit_auditevent")

            n, plain_s = stream_without_hashing()  # also warms the cache for both runs
            n, plain_s = stream_without_hashing()
            started = time.perf_counter()
            result = audit_chain_verify()
            verify_s = time.perf_counter() - started
            if not result.ok or result.verified != target:
                raise SystemExit(f"unexpected result: {result}")
            print(
                f"audit_verify over {result.verified:,} events: {result.verified / verify_s:10,.0f}/s ({verify_s:.2f}s)\n"
                f"SELECT same rows, no hashing:     {n / plain_s:10,.0f}/s ({plain_s:.2f}s)   ratio {plain_s / verify_s:.2f}"
            )
            from io import StringIO

            out = StringIO()
            call_command("audit_verify", stdout=out)
            print(f"manage.py audit_verify: {out.getvalue().strip()}")
        finally:
            if "django.db" in sys.modules:
                from django.db import connections

                connections.close_all()
            node.stop()


REPLICATED_ADDRESSES = {"r1": "127.0.0.84", "r2": "127.0.0.85"}
REPLICATED_AIM = 0.5


def _sync_rows(lab, leader: str) -> list[tuple[str, ...]]:
    out = lab.superuser_sql(leader, "SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY 1")
    return [tuple(line.split("|")) for line in out.splitlines() if line]


def replicated_main(one: int, per_writer: int) -> None:
    """The replicated row: single node, then a synchronous standby, then single again."""
    import logging
    import shutil

    root = Path(tempfile.mkdtemp(prefix="pam-bench-audit-repl-"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "pamportal.settings_test"  # this process only starts the lab
    os.environ["PAM_DATA_DIR"] = str(root / "scratch")
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    logging.getLogger("pamportal.replication").setLevel(logging.WARNING)
    from bench.failover import cluster_data_dir, django_env, manage
    from tests.replication.support import Lab, missing_tools, wait_until

    missing = missing_tools()
    if missing:
        shutil.rmtree(root, ignore_errors=True)
        raise SystemExit(f"bench/audit.py --replicated cannot run here: {missing}")
    lab = Lab(root / "lab", addresses=REPLICATED_ADDRESSES)
    try:
        lab.etcd_start()
        lab.member_start("r1")
        lab.wait_leader("r1", "r1", timeout=120)
        wait_until(lambda: lab.connect("r1").execute("SELECT 1").fetchone(), 60, what="the application role on r1",
                   log=lambda: lab.log("r1"))
        env = django_env(cluster_data_dir(lab, root / "node", list(REPLICATED_ADDRESSES)))
        manage(env, "migrate", "--verbosity", "0", "--skip-checks")
        shown = lab.superuser_sql("r1", "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings "
                                        "WHERE name IN ('fsync', 'synchronous_commit', 'wal_sync_method', "
                                        "'shared_buffers', 'wal_level')")

        def measure(label: str) -> dict[int, float]:
            figures = {}
            for writers, count in ((1, one), (8, per_writer)):
                figures[writers] = appends_per_second(env, "audit", writers, count, in_process=False)
            standby = lab.superuser_sql("r1", "SHOW synchronous_standby_names") or "(none)"
            print(f"  {label:<28} 1 writer {figures[1]:7,.0f}/s   8 writers {figures[8]:7,.0f}/s   "
                  f"synchronous_standby_names {standby}", flush=True)
            return figures

        print(f"r1 alone on {REPLICATED_ADDRESSES['r1']}: {shown}")
        single = measure("r1 alone")

        lab.member_start("r2")
        lab.wait_sync_standby("r1", "r2", timeout=180)
        rows = wait_until(lambda: _sync_rows(lab, "r1") == [("r2", "streaming", "sync")] and _sync_rows(lab, "r1"),
                          30, what="r2 as the sync standby in pg_stat_replication")
        print(f"pg_stat_replication on r1 (application_name, state, sync_state): {rows}")
        replicated = measure("r1 + r2 synchronous")
        after = _sync_rows(lab, "r1")
        if after != [("r2", "streaming", "sync")]:
            raise SystemExit(f"r2 was not the sync standby all along: {after}")

        lab.member_stop("r2")
        wait_until(lambda: lab.superuser_sql("r1", "SHOW synchronous_standby_names") == "", 60,
                   what="r1 back to no synchronous standby")
        single_after = measure("r1 alone again")
        verified = manage(env, "audit_verify", "--skip-checks").strip()

        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"\n== audit appends (one transaction each): single node against a synchronous replica\n"
              f"Patroni members on {', '.join(REPLICATED_ADDRESSES.values())} (TLS, libpq multi-host through Django); "
              f"{os.cpu_count()} CPUs, load average {load} at the end (shared machine: expect noise)")
        print(f"{'writers':<8} {'single /s':>10} {'sync replica /s':>16} {'single again /s':>16} {'ratio':>6}  aim >= {REPLICATED_AIM}x")
        for writers in (1, 8):
            base = (single[writers] + single_after[writers]) / 2
            ratio = replicated[writers] / base
            print(f"{writers:<8} {single[writers]:10,.0f} {replicated[writers]:16,.0f} {single_after[writers]:16,.0f} "
                  f"{ratio:5.2f}x  {'met' if ratio >= REPLICATED_AIM else 'MISSED'}")
        print("(ratio: sync replica against the mean of the two single-node runs)")
        print(f"manage.py audit_verify: {verified}")
    finally:
        try:
            lab.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicated", action="store_true",
                        help="single Patroni member against a synchronous replica (127.0.0.84-85) instead")
    parser.add_argument("--appends", type=int, default=3000, help="with --replicated: appends of the one writer")
    parser.add_argument("--per-writer", type=int, default=500, help="with --replicated: appends of each of 8 writers")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--kind", choices=("audit", "plain"))
    parser.add_argument("--count", type=int)
    parser.add_argument("--start-at", type=float)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
    elif args.replicated:
        replicated_main(args.appends, args.per_writer)
    else:
        main()
