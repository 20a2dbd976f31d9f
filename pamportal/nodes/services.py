"""Actions on this node."""

from __future__ import annotations

from pamportal.jobs.models import Job
from pamportal.jobs.services import job_create

from .facts import KIND as FACTS_KIND
from .selectors import node_facts_running


def node_facts_collect(*, user, enqueue: bool = True) -> tuple[Job, bool]:
    """Start a "collect node facts" job, unless one is already under way.

    Returns the job and whether it was created now.
    """
    running = node_facts_running()
    if running is not None:
        return running, False
    return job_create(kind=FACTS_KIND, created_by=user, enqueue=enqueue), True


# --- the TLS files gunicorn serves ------------------------------------------------------
def _write_file(path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed over it)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def ca_cert_path():
    from django.conf import settings

    return settings.PAM_TLS_CERT.with_name("cluster-ca.crt")


def node_tls_files_write(*, cert_pem: bytes, key_pem: bytes, ca_cert_pem: bytes) -> None:
    """Put the node's certificate, its key (0600) and the CA certificate where the
    console reads them. The key first and the certificate last: ``serve`` watches the
    certificate and reloads the console once it changes."""
    from django.conf import settings

    _write_file(settings.PAM_TLS_KEY, key_pem, 0o600)
    _write_file(ca_cert_path(), ca_cert_pem, 0o644)
    _write_file(settings.PAM_TLS_CERT, cert_pem, 0o644)


def node_tls_files_restore() -> bool:
    """Write the finalised node's certificate and key files again from the database
    (the key unsealed with the MEK). False if the node has no certificate yet."""
    from pamportal.nodes import keystore

    from .models import SEAL_PURPOSE, Certificate, CertificateKind

    rows = {c.kind: c for c in Certificate.objects.filter(replaced_at__isnull=True)}
    node, ca_row = rows.get(CertificateKind.NODE_TLS), rows.get(CertificateKind.CLUSTER_CA)
    if node is None or ca_row is None:
        return False
    key_pem = keystore.unseal(purpose=SEAL_PURPOSE[CertificateKind.NODE_TLS], sealed=node.sealed_key)
    node_tls_files_write(cert_pem=node.cert_pem.encode(), key_pem=key_pem, ca_cert_pem=ca_row.cert_pem.encode())
    return True
