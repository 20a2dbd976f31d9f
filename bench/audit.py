"""Audit chain benchmark (PostgreSQL only, run on demand, not part of the suite).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pamportal .venv/bin/python bench/audit.py

Creates a database of its own (dropped afterwards) and prints:
  * audit appends per second, 1 writer and 8 writer processes, each append its own
    transaction, against a plain INSERT of an equivalent row per transaction;
  * ``audit_verify`` events per second over 1,000,000 events, against streaming the
    same rows with no hashing.
Aims (issue 2): >= 2,000 appends/s with one writer, >= 200,000 verified events/s.
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


def appends_per_second(env: dict[str, str], kind: str, writers: int, per_writer: int) -> float:
    if writers == 1:
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
        raise SystemExit("bench/audit.py needs DATABASE_URL pointing at PostgreSQL")
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--kind", choices=("audit", "plain"))
    parser.add_argument("--count", type=int)
    parser.add_argument("--start-at", type=float)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
    else:
        main()
