"""Replica bootstrap benchmark on real processes (run on demand, not part of the suite).

    .venv/bin/python bench/join_replica.py [--events 1000000]

Starts two etcd members and a Patroni-managed PostgreSQL 15 leader on 127.0.0.86
(tests/replication's Lab: TLS, cluster-CA certificates), migrates the cluster's
database through Django, and fills the audit chain with ``--events`` valid chained
events: one COPY, each event's hash computed with ``pamportal.audit.chain.event_hash``
as ``audit_record`` does (bench/audit.py's ``load_chain``; through the service it
would take minutes), checked with ``manage.py audit_verify``. Then:

  * a bare ``pg_basebackup`` of the leader, as Patroni runs it (``-X stream``, fast
    checkpoint, the replication role with a cluster-CA certificate over TLS), into a
    scratch directory;
  * a new Patroni member on 127.0.0.87: from its start until it streams as the
    synchronous standby (Patroni's basebackup, then PostgreSQL's start and catch-up);
  * the member stopped and its files removed, and again (``--joins``, 3 by default),
    with a bare copy before each join and after the last, so the baseline brackets them.

Prints the medians, and the join (to streaming, and to streaming as the sync standby:
the leader's Patroni adds it on its next loops) as a ratio to the median bare copy.
Aim (issue 11): <= 1.5x.
Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ADDRESSES = {"j1": "127.0.0.86", "j2": "127.0.0.87"}
AIM = 1.5


def bare_basebackup(lab, target: Path) -> float:
    """pg_basebackup of j1 into ``target`` as Patroni takes one; seconds, data synced."""
    from pamportal.replication import config

    cert = lab.pki.nodes["j2"]
    conninfo = (f"host={lab.addresses['j1']} port={lab.pg_ports['j1'][0]} user={config.REPLICATION_USER} "
                f"sslmode=verify-full sslrootcert={lab.pki.ca_file} sslcert={cert.cert_file} sslkey={cert.key_file} "
                f"connect_timeout=5")
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    out = subprocess.run(
        [str(config.POSTGRES_BIN_DIR / "pg_basebackup"), "-D", str(target), "-X", "stream", "--checkpoint=fast",
         "-d", conninfo],
        capture_output=True, text=True, timeout=1800, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"pg_basebackup failed: {out.stderr}")
    shutil.rmtree(target, ignore_errors=True)
    return elapsed


def join_phases(lab, started: float, timeout: float = 1800) -> dict[str, float]:
    """Seconds from the member's start to the first sight of each of j2's role/state
    pairs in the leader's Patroni view (replica/creating replica, replica/streaming,
    ...), until it streams as the sync standby."""
    phases: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            member = lab.api("j1", timeout=2).cluster().member("j2")
        except Exception:  # noqa: BLE001 — the leader's API busy: ask again
            member = None
        now = time.perf_counter() - started
        if member is not None:
            phases.setdefault(f"{member.role}/{member.state}", now)
            if member.state == "streaming" and member.is_sync_standby:
                return phases
        time.sleep(0.1)
    raise SystemExit(f"j2 did not become the sync standby in {timeout:g}s (phases {phases}):\n{lab.log('j2')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="audit events on the leader")
    parser.add_argument("--joins", type=int, default=3, help="joins (a fresh replica each time); median reported")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="pam-bench-join-replica-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pamportal.settings_test")
    os.environ["PAM_DATA_DIR"] = str(root / "scratch")
    import django

    django.setup()
    logging.getLogger("pamportal.replication").setLevel(logging.WARNING)
    import psycopg

    from bench.audit import load_chain
    from bench.failover import cluster_data_dir, django_env, manage
    from pamportal.replication import process
    from tests.replication.support import Lab, missing_tools, wait_until

    missing = missing_tools()
    if missing:
        shutil.rmtree(root, ignore_errors=True)
        raise SystemExit(f"bench/join_replica.py cannot run here: {missing}")
    lab = Lab(root / "lab", addresses=ADDRESSES)
    try:
        lab.etcd_start()
        lab.member_start("j1")
        lab.wait_leader("j1", "j1", timeout=120)
        wait_until(lambda: lab.connect("j1").execute("SELECT 1").fetchone(), 60, what="the application role on j1",
                   log=lambda: lab.log("j1"))
        env = django_env(cluster_data_dir(lab, root / "node", list(ADDRESSES)))
        manage(env, "migrate", "--verbosity", "0", "--skip-checks")

        started = time.perf_counter()
        with psycopg.connect(**lab.conninfo("j1")) as conn:
            existing = conn.execute("SELECT position FROM audit_audithead WHERE id = 1").fetchone()[0]
            load_chain(conn, args.events - existing)
        loaded = time.perf_counter() - started
        verified = manage(env, "audit_verify", "--skip-checks", timeout=900).strip()
        lab.superuser_sql("j1", "CHECKPOINT")
        size = lab.superuser_sql("j1", "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database")
        print(f"leader j1 on {ADDRESSES['j1']}: {args.events:,} audit events loaded by COPY in {loaded:.1f}s "
              f"(chain computed with pamportal.audit.chain); clusters' databases {size}\n"
              f"manage.py audit_verify: {verified}", flush=True)

        scratch = lab.pg_base / "bare-copy"
        shown = manage(env, "shell", "-c", "from pamportal.audit.selectors import audit_head; print(audit_head()[0])")
        head = int(shown.strip().splitlines()[-1])
        bare: list[float] = []
        joins: list[tuple[float, float, dict[str, float]]] = []
        for i in range(args.joins):
            bare.append(bare_basebackup(lab, scratch))
            print(f"  bare pg_basebackup: {bare[-1]:.2f}s", flush=True)
            started = time.perf_counter()
            lab.member_start("j2")
            phases = join_phases(lab, started)
            streaming = min(v for k, v in phases.items() if k.endswith("/streaming"))
            joins.append((streaming, max(phases.values()), phases))
            print(f"  join {i + 1}: Patroni member j2 start -> streaming {streaming:.2f}s, "
                  f"as the sync standby {joins[-1][1]:.2f}s", flush=True)
            with lab.connect("j2") as replica:
                wait_until(lambda: replica.execute("SELECT position FROM audit_audithead WHERE id = 1").fetchone()[0]
                           == head, 30, what="the chain head on j2")
            # gone again, files and all, so that the next join copies everything
            lab.member_stop("j2")
            wait_until(lambda: lab.superuser_sql("j1", "SHOW synchronous_standby_names") == "", 60,
                       what="j1 without a synchronous standby")
            process.member_remove(lab.paths("j2"))
            lab.specs.pop("j2")
        bare.append(bare_basebackup(lab, scratch))
        print(f"  bare pg_basebackup: {bare[-1]:.2f}s", flush=True)

        baseline = statistics.median(bare)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"\n== replica bootstrap from a leader holding {args.events:,} audit events ({size}), "
              f"median of {args.joins} joins against the median of {len(bare)} bare copies taken between them\n"
              f"{os.cpu_count()} CPUs, load average {load} at the end (shared machine: expect noise); "
              f"TLS with cluster-CA certificates on both; j2 had the leader's chain head ({head:,}) every time")
        print(f"{'what':<52} {'median s':>8} {'min-max s':>11} {'ratio':>7}")
        rows = (("bare pg_basebackup -X stream --checkpoint=fast", bare),
                ("Patroni member start -> streaming replica", [j[0] for j in joins]),
                ("Patroni member start -> streaming as sync standby", [j[1] for j in joins]))
        for what, figures in rows:
            median = statistics.median(figures)
            spread = f"{min(figures):.2f}-{max(figures):.2f}"
            ratio = "" if figures is bare else (f"{median / baseline:6.2f}x  aim <= {AIM}x: "
                                                f"{'met' if median / baseline <= AIM else 'MISSED'}")
            print(f"{what:<52} {median:8.2f} {spread:>11} {ratio}")
        print("j2's phases in the last join, seconds from its start (the leader's Patroni view, polled every "
              "0.1 s): " + ", ".join(f"{k} {v:.2f}" for k, v in joins[-1][2].items()))
    finally:
        try:
            lab.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
