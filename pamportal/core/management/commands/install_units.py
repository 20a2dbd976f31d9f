"""Write the node's systemd units (see ``pamportal.core.units``) for a data dir and a
user, into /etc/systemd/system unless told otherwise, and print what was written."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from pamportal.core.files import write_private
from pamportal.core.units import SYSTEMD_DIR, TARGET, NodeLayout, render_units

# Production defaults (settings under PAM_ENV=production).
PRODUCTION_HTTPS_PORT = 443
PRODUCTION_BIND = "0.0.0.0"


class Command(BaseCommand):
    help = "Write the node's systemd units (console, worker, setup API, delegation API, etcd) for a data dir and user."

    def add_arguments(self, parser):
        parser.add_argument("--data-dir", required=True, type=Path, help="the node's data dir (PAM_DATA_DIR)")
        parser.add_argument("--user", required=True, help="the unprivileged user the node runs as")
        parser.add_argument("--group", help="its group (default: the user's name)")
        parser.add_argument("--output-dir", type=Path, default=SYSTEMD_DIR, help=f"default {SYSTEMD_DIR}")
        parser.add_argument("--python", default=sys.executable, help="the virtualenv's Python (default: this one)")
        parser.add_argument("--bind", default=PRODUCTION_BIND, help=f"listen address (default {PRODUCTION_BIND})")
        parser.add_argument("--https-port", type=int, default=PRODUCTION_HTTPS_PORT)
        parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
        parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")

    def handle(self, *args, data_dir: Path, user: str, group: str | None, output_dir: Path, python: str,
               bind: str, https_port: int, workers: int, concurrency: int, **options):
        if not data_dir.is_absolute():
            raise CommandError("--data-dir must be an absolute path")
        if user == "root" or user.isdigit() and int(user) == 0:
            raise CommandError("the node runs as a dedicated unprivileged user, not root")
        layout = NodeLayout.from_settings(data_dir=data_dir, python=os.path.abspath(python), bind=bind,
                                          https_port=https_port)
        try:
            units = render_units(layout, user=user, group=group, workers=workers, concurrency=concurrency)
        except ValueError as error:
            raise CommandError(str(error)) from error
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, text in units.items():
            write_private(output_dir / name, text.encode(), 0o644)
            self.stdout.write(f"wrote {output_dir / name}")
        if output_dir == SYSTEMD_DIR:
            self.stdout.write(f"then: systemctl daemon-reload && systemctl enable --now {TARGET}")
