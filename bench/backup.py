"""Backup benchmark (run on demand, not part of the suite).

    .venv/bin/python bench/backup.py [--events 100000] [--bulk-mib 0]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pamportal .venv/bin/python bench/backup.py

A finalised node of its own (a temporary data dir; with DATABASE_URL, a PostgreSQL
database of its own, dropped afterwards) with ``--events`` audit events, then:
  * ``manage.py backup``: the archive's size, the time to write it and to prove it,
    and the process's peak RSS;
  * ``manage.py restore`` onto a fresh node and ``manage.py audit_verify`` there.
``--bulk-mib N`` adds an N MiB incompressible row to the database first, to show that
the backup's memory does not grow with the size of what it archives.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

REPO = Path(__file__).resolve().parents[1]
# manage.py, reporting its own peak RSS when it exits.
WRAP = (
    "import atexit, resource, runpy, sys\n"
    "atexit.register(lambda: print('peak_rss_kib=%d' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
    " file=sys.stderr))\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)

SEED = """
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction
from pamportal.audit.services import audit_record
from pamportal.setup import wizard
from tests.setup.helpers import through_mek
admin = get_user_model().objects.create_user(username="admin", password="a long bench passphrase 42",
                                             role=Role.ADMINISTRATOR)
through_mek(admin)
wizard.setup_finalise(user=admin)
done = 0
while done < {events}:
    with transaction.atomic():
        for i in range(min(10_000, {events} - done)):
            audit_record(action=AuditAction.LOGIN_SUCCEEDED, target=f"user:u{{i % 50}}", details={{"i": done + i}},
                         actor_name=f"u{{i % 50}}")
    done += min(10_000, {events} - done)
if {bulk_mib}:
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_bulk (data TEXT)")
        for _ in range({bulk_mib}):
            cursor.execute("INSERT INTO bench_bulk VALUES (%s)", [os.urandom(512 * 1024).hex()])
print("seeded")
"""


class Node:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        data_dir.mkdir(parents=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PAM_", "DJANGO_"))}
        self.env.update(DJANGO_SETTINGS_MODULE="pamportal.settings", PAM_DATA_DIR=str(data_dir))
        self.database = ""
        url = os.environ.get("DATABASE_URL", "")
        if url.startswith(("postgres://", "postgresql://")):
            import psycopg

            self.database = "pamportal_bench_" + uuid.uuid4().hex[:10]
            parsed = urlparse(url)
            self.admin = urlunparse(parsed._replace(path="/postgres"))
            with psycopg.connect(self.admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.database}"')
            self.env["DATABASE_URL"] = urlunparse(parsed._replace(path="/" + self.database))

    def manage(self, *args: str) -> tuple[str, float, int]:
        """(stdout, seconds, peak RSS of the process in KiB)."""
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", WRAP, str(REPO / "manage.py"), *args], cwd=REPO, env=self.env,
                                capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"manage.py {args[0]} failed:\n{result.stdout}\n{result.stderr}")
        peak = int(re.search(r"peak_rss_kib=(\d+)", result.stderr).group(1))
        return result.stdout + result.stderr, elapsed, peak

    def drop(self) -> None:
        if self.database:
            import psycopg

            with psycopg.connect(self.admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--bulk-mib", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pamportal-bench-backup-") as tmp:
        source, fresh = Node(Path(tmp) / "source"), Node(Path(tmp) / "fresh")
        try:
            source.manage("migrate", "--noinput")
            started = time.perf_counter()
            source.manage("shell", "-c", "import os\n" + SEED.format(events=args.events, bulk_mib=args.bulk_mib))
            print(f"seeded {args.events:,} audit events in {time.perf_counter() - started:.1f}s "
                  f"({'PostgreSQL' if source.database else 'SQLite'})")
            out, elapsed, peak = source.manage("backup")
            archive = re.search(r"^archive: (.+)$", out, re.M).group(1)
            size = int(re.search(r"^size: (\d+)", out, re.M).group(1))
            timings = re.search(r"^timings: (.+)$", out, re.M).group(1)
            print(f"backup: {size / 1e6:.1f} MB archive; {timings}; manage.py backup {elapsed:.2f}s in all, "
                  f"peak RSS {peak / 1024:.0f} MiB")
            print(re.search(r"^proof: .+$", out, re.M).group(0))
            mek_file = Path(tmp) / "mek.key"
            mek_file.write_bytes((source.data_dir / "mek.key").read_bytes())
            out, elapsed, peak = fresh.manage("restore", archive, "--mek-file", str(mek_file))
            print(f"restore onto a fresh node: {elapsed:.2f}s, peak RSS {peak / 1024:.0f} MiB; "
                  + re.search(r"audit head restored to event \d+", out).group(0))
            out, elapsed, _ = fresh.manage("audit_verify")
            verified = [line for line in out.splitlines() if line.startswith("verified ")]
            print(f"audit_verify on the restored node: {verified[0] if verified else out.strip()}")
        finally:
            source.drop()
            fresh.drop()


if __name__ == "__main__":
    main()
