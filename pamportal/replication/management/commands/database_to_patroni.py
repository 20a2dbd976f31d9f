"""``manage.py database_to_patroni``: move this standalone node from its SQLite file onto
its own one-member PostgreSQL under Patroni, losing nothing (pamportal.replication.move).

Run it with the console and worker stopped and the node's etcd member running; start
the node again afterwards: it then runs its PostgreSQL member too."""

from __future__ import annotations

import getpass

from django.core.management.base import BaseCommand, CommandError

from pamportal.core.context import acting
from pamportal.replication.move import LEAD_TIMEOUT, MoveFailed, MoveRefused, database_to_patroni


class Command(BaseCommand):
    help = ("Move this standalone node's database from SQLite onto its own PostgreSQL member under Patroni "
            "(stop the console and worker first; the node's etcd member must be running).")

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=LEAD_TIMEOUT,
                            help=f"seconds to wait for the new member to lead (default {LEAD_TIMEOUT:g})")

    def handle(self, *args, timeout: float, **options):
        try:
            who = getpass.getuser()
        except (KeyError, OSError):
            who = "unknown"
        with acting(actor_id=None, actor_name=f"manage.py database_to_patroni ({who})"):
            try:
                result = database_to_patroni(lead_timeout=timeout, say=self.stdout.write)
            except MoveRefused as exc:
                raise CommandError(f"not moved: {exc}", returncode=2) from None
            except MoveFailed as exc:
                raise CommandError(str(exc), returncode=1) from None
        rows = sum(result.rows.values())
        self.stdout.write(self.style.SUCCESS(
            f"moved: {rows} rows in {len(result.rows)} tables to PostgreSQL member {result.member} "
            f"({result.host}:{result.port}) in {result.seconds['total']:.1f}s; audit chain head at position "
            f"{result.head_position}, hash {result.head_hash} on both"))
        self.stdout.write(f"database settings: {result.database_file}")
        self.stdout.write(f"SQLite kept as {result.sqlite_kept} (never deleted)")
        self.stdout.write("Start the node again (`systemctl start pamportal.target` or `manage.py serve`): it now "
                          "runs its PostgreSQL member under Patroni too.")
