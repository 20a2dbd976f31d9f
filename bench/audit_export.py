"""Audit export benchmark (PostgreSQL only, run on demand, not part of the suite).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pamportal .venv/bin/python bench/audit_export.py

Creates a database of its own (dropped afterwards), fills a valid chain of 1,000,000
events, and prints:
  * CSV and JSON Lines export time (file written and manifest signed, in a fresh
    process) against PostgreSQL's own ``COPY (SELECT ...) TO STDOUT`` of the same rows
    in the same run, and the ratio (aim: at most 3x);
  * the exporting process's peak RSS (aim: under 150 MB whatever the count);
  * offline verification speed of each file with tools/verify_audit_export.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The same rows and columns as the CSV export, formatted by PostgreSQL.
COPY_SQL = """
COPY (SELECT position, to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), actor_id,
             actor_name, source_ip, request_id, action, target, outcome, details, prev_hash, hash
        FROM audit_auditevent WHERE position <= {upto} ORDER BY position) TO STDOUT (FORMAT csv, HEADER)
"""


def export_main(args) -> None:
    """In a fresh process: export, then report time and this process's peak RSS."""
    import resource

    import django

    django.setup()
    from pamportal.audit.exports import audit_export_create, audit_export_run

    export = audit_export_create(user=None, format=args.format, filters={})
    started = time.perf_counter()
    export = audit_export_run(export_id=export.pk)
    elapsed = time.perf_counter() - started
    from pamportal.audit import conf

    print(json.dumps({
        "seconds": elapsed,
        "rows": export.row_count,
        "bytes": export.size,
        "file": str(conf.export_dir() / export.file_name),
        "manifest": export.manifest,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def copy_seconds(dsn: str, upto: int) -> tuple[float, int]:
    import psycopg

    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        size = 0
        with cur.copy(COPY_SQL.format(upto=upto)) as copy:
            for data in copy:
                size += len(data)
        return time.perf_counter() - started, size


def main() -> None:
    from tests.support.node import NodeEnv, using_postgres

    if not using_postgres():
        raise SystemExit("bench/audit_export.py needs DATABASE_URL pointing at PostgreSQL")
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pamportal-bench-") as tmp:
        node = NodeEnv(Path(tmp) / "node")
        try:
            print(f"database {node.name} (dropped afterwards)")
            env = dict(node.env, PAM_AUDIT_EXPORT_INLINE_MAX=str(10**12))
            os.environ.update(env)
            import django

            django.setup()
            from django.core.management import call_command
            from django.db import connection

            call_command("migrate", interactive=False, verbosity=0)
            from bench.audit import load_chain

            started = time.perf_counter()
            connection.ensure_connection()
            load_chain(connection.connection, args.events)
            print(f"loaded {args.events:,} events by COPY in {time.perf_counter() - started:.1f}s")
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE audit_auditevent")
            connection.close()
            dsn = env["DATABASE_URL"]
            copy_seconds(dsn, args.events)  # warm the cache
            copy_s, copy_bytes = copy_seconds(dsn, args.events)
            print(f"\nCOPY (SELECT ...) TO STDOUT, csv:   {copy_s:6.2f}s  {copy_bytes / 2**20:7.1f} MiB")

            results = {}
            for fmt in ("csv", "jsonl"):
                proc = subprocess.run(
                    [sys.executable, __file__, "--export-worker", fmt], env=env, cwd=REPO,
                    capture_output=True, text=True, timeout=1800,
                )
                if proc.returncode != 0:
                    raise SystemExit(f"export {fmt} failed:\n{proc.stderr}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                results[fmt] = result
                print(
                    f"export {fmt:5} ({result['rows']:,} rows):     {result['seconds']:6.2f}s  "
                    f"{result['bytes'] / 2**20:7.1f} MiB   ratio to COPY {result['seconds'] / copy_s:.2f}x   "
                    f"peak RSS {result['peak_rss_mb']:.0f} MB"
                )

            print()
            for fmt, result in results.items():
                manifest = Path(tmp) / f"{fmt}.manifest.json"
                manifest.write_text(result["manifest"])
                started = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, str(REPO / "tools" / "verify_audit_export.py"), result["file"], str(manifest)],
                    capture_output=True, text=True, timeout=1800,
                )
                took = time.perf_counter() - started
                verdict = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()
                print(f"offline verify {fmt:5}: {result['rows'] / took:10,.0f} events/s ({took:.2f}s)  {verdict[:60]}")
        finally:
            from django.db import connections

            connections.close_all()
            node.stop()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--export-worker":
        export_main(argparse.Namespace(format=sys.argv[2]))
    else:
        main()
