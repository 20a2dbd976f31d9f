"""Create the node's TLS certificate and key in the data dir if there are none."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import DatabaseError

from pamportal.core.files import write_private
from pamportal.crypto.ca import certificate_not_after, self_signed_certificate
from pamportal.nodes.selectors import node_is_finalised
from pamportal.nodes.services import node_tls_files_restore


class Command(BaseCommand):
    help = "Create the node's self-signed TLS certificate if the data dir has none."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="replace an existing certificate")

    def handle(self, *args, force: bool = False, **options):
        cert_path, key_path = Path(settings.PAM_TLS_CERT), Path(settings.PAM_TLS_KEY)
        if cert_path.exists() and key_path.exists() and not force:
            expires = certificate_not_after(cert_path.read_bytes())
            self.stdout.write(f"TLS certificate present: {cert_path} (valid until {expires:%Y-%m-%d})")
            return
        if self._restore_finalised():
            self.stdout.write(f"TLS certificate signed by the cluster CA written again from the database: {cert_path}")
            return
        cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        names = ["localhost", "127.0.0.1", "::1", settings.PAM_NODE_ADDRESS]
        if settings.PAM_BIND_ADDRESS not in ("0.0.0.0", "::"):
            names.append(settings.PAM_BIND_ADDRESS)
        cert_pem, key_pem = self_signed_certificate(names)
        write_private(key_path, key_pem, 0o600)
        write_private(cert_path, cert_pem, 0o644)
        self.stdout.write(f"TLS certificate created for {', '.join(dict.fromkeys(names))}: {cert_path}")

    def _restore_finalised(self) -> bool:
        """A finalised node serves its CA-signed certificate, never a new self-signed one."""
        try:
            return node_is_finalised() and node_tls_files_restore()
        except DatabaseError:  # not migrated yet: a first boot
            return False
