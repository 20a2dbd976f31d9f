"""Actions on this node."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from pamportal.core.files import write_private
from pamportal.jobs.models import Job
from pamportal.jobs.services import job_create

from . import keystore
from .facts import KIND as FACTS_KIND
from .identity import shared_database_address
from .models import SEAL_PURPOSE, Certificate, CertificateKind
from .selectors import certificate_is_own, node_facts_running


def node_facts_collect(*, user, enqueue: bool = True) -> tuple[Job, bool]:
    """Start a "collect node facts" job, unless one is already under way.

    Returns the job and whether it was created now.
    """
    running = node_facts_running()
    if running is not None:
        return running, False
    address = shared_database_address()
    # On the cluster's shared database the facts are this node's: its address goes with them.
    return job_create(kind=FACTS_KIND, params={"node_address": address} if address else None, created_by=user,
                      enqueue=enqueue), True


# --- the TLS files gunicorn serves ------------------------------------------------------
def _write_file(path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, data, mode)


def ca_cert_path() -> Path:
    return settings.PAM_TLS_CERT.with_name("cluster-ca.crt")


def node_tls_files_write(*, cert_pem: bytes, key_pem: bytes, ca_cert_pem: bytes) -> None:
    """Put the node's certificate, its key (0600) and the CA certificate where the
    console reads them. The key first and the certificate last: ``serve`` watches the
    certificate and reloads the console once it changes."""
    _write_file(settings.PAM_TLS_KEY, key_pem, 0o600)
    _write_file(ca_cert_path(), ca_cert_pem, 0o644)
    _write_file(settings.PAM_TLS_CERT, cert_pem, 0o644)


def node_tls_files_restore() -> bool:
    """Write the finalised node's certificate and key files again from the database
    (the key unsealed with the MEK). False if the node has no certificate yet."""
    rows = {c.kind: c for c in Certificate.objects.filter(replaced_at__isnull=True)}
    node, ca_row = rows.get(CertificateKind.NODE_TLS), rows.get(CertificateKind.CLUSTER_CA)
    if not certificate_is_own(node) or ca_row is None:
        return False  # on the cluster's shared database: another member's, never written here
    key_pem = keystore.unseal(purpose=SEAL_PURPOSE[CertificateKind.NODE_TLS], sealed=node.sealed_key)
    node_tls_files_write(cert_pem=node.cert_pem.encode(), key_pem=key_pem, ca_cert_pem=ca_row.cert_pem.encode())
    return True
