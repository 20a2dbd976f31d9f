"""Run this node's etcd member in the foreground: read its configuration
(``cluster.local_etcd``) and exec etcd with the command line of
``cluster.etcd_process.command_line``. ``serve`` runs it as a child, the systemd unit
``pamportal-etcd.service`` as its own service; with ``serve --no-etcd`` it can run
on its own, so that restarting the app never restarts the member.

The process becomes etcd (exec): signals, exit status and the PR_SET_PDEATHSIG serve
set are etcd's."""

from __future__ import annotations

import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from pamportal.cluster.etcd_process import command_line
from pamportal.cluster.local_etcd import config_path, local_member_config
from pamportal.nodes.services import ca_cert_path


class Command(BaseCommand):
    help = "Run this node's etcd member (exec etcd from the member configuration)."

    def handle(self, *args, **options):
        member = local_member_config()
        if member is None:
            raise CommandError(f"this node has no etcd member: no readable {config_path()}")
        if not ca_cert_path().exists():
            raise CommandError(f"no cluster CA at {ca_cert_path()}")
        argv = command_line(member)
        os.umask(0o077)
        Path(member.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.stdout.flush()
        os.execv(argv[0], argv)
