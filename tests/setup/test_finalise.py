"""Finalise: the cluster CA and the node certificate (keys only sealed), the files the
console serves, one transaction with its audit events; and what the database and the
logs never hold: the MEK and private keys in the clear."""

from __future__ import annotations

import base64
import json
import logging
from unittest import mock

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.apps import apps
from django.conf import settings
from django.core import serializers
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from pamportal.audit.actions import AuditAction
from pamportal.audit.models import AuditEvent
from pamportal.crypto import ca, mek
from pamportal.nodes import keystore
from pamportal.nodes.models import Certificate, CertificateKind
from pamportal.nodes.progress import StepRefused
from pamportal.nodes.selectors import node_current
from pamportal.setup import wizard
from tests.accounts.helpers import events

from .helpers import ADDRESS, NTP, finish_preflight, groups_in, licence_file, through_mek

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(admin_user, login_client, client):
    login_client(admin_user, client)
    return client


def test_finalise_creates_the_ca_and_the_node_certificate_and_serves_it(admin, admin_user, data_dir):
    key = through_mek(admin_user)
    page = admin.get(reverse("setup:finalise")).content.decode()
    assert "Finalise setup" in page and ADDRESS in page
    response = admin.post(reverse("setup:finalise"))
    assert response["Location"] == reverse("nodes:dashboard")

    node = node_current()
    assert node.finalised and node.role == "standalone" and node.finalised_by == admin_user.username
    rows = {c.kind: c for c in Certificate.objects.all()}
    ca_row, node_row = rows[CertificateKind.CLUSTER_CA], rows[CertificateKind.NODE_TLS]
    ca_cert = x509.load_pem_x509_certificate(ca_row.cert_pem.encode())
    constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    ca.verify_issued_by(node_row.cert_pem.encode(), ca_row.cert_pem.encode())
    assert node_row.names == [ADDRESS, "localhost", "127.0.0.1"]

    # Keys are stored sealed only, under their own purposes, and open with the MEK.
    ca_key = keystore.unseal(purpose="cluster-ca-key", sealed=ca_row.sealed_key)
    node_key = keystore.unseal(purpose="node-tls-key", sealed=node_row.sealed_key)
    assert ca.key_matches(ca_row.cert_pem.encode(), ca_key) and ca.key_matches(node_row.cert_pem.encode(), node_key)
    with pytest.raises(mek.UnsealError):
        mek.unseal(mek.generate(), "cluster-ca-key", ca_row.sealed_key)
    with pytest.raises(mek.UnsealError):
        keystore.unseal(purpose="node-tls-key", sealed=ca_row.sealed_key)
    assert keystore.mek_load() == key

    # The files gunicorn serves: the node's certificate and key (0600), the CA beside them.
    assert settings.PAM_TLS_CERT.read_text() == node_row.cert_pem
    assert ca.key_matches(settings.PAM_TLS_CERT.read_bytes(), settings.PAM_TLS_KEY.read_bytes())
    assert settings.PAM_TLS_KEY.stat().st_mode & 0o777 == 0o600
    assert (settings.PAM_TLS_CERT.parent / "cluster-ca.crt").read_text() == ca_row.cert_pem

    actions = [e.action for e in AuditEvent.objects.order_by("position")][-3:]
    assert actions == [AuditAction.CA_CREATED, AuditAction.NODE_CERTIFICATE_ISSUED, AuditAction.SETUP_FINALISED]

    # The dashboard: a standalone server, its licence, its certificates, what comes next.
    dashboard = admin.get(reverse("nodes:dashboard")).content.decode()
    assert "Setup not finished" not in dashboard
    assert "standalone" in dashboard and ADDRESS in dashboard
    assert "ACME Ltd" in dashboard and 'id="node-certificates"' in dashboard and "Cluster CA" in dashboard
    assert "Next: form a cluster" in dashboard and "joining bundle" in dashboard
    # The wizard is over: its steps lead to the dashboard, and finalise cannot run twice.
    for name in ("setup:node", "setup:mek", "setup:finalise"):
        assert admin.get(reverse(name))["Location"] == reverse("nodes:dashboard")
    with pytest.raises(StepRefused, match="already finalised"):
        wizard.setup_finalise(user=admin_user)
    assert Certificate.objects.count() == 2


def test_finalise_is_atomic(admin, admin_user, data_dir):
    through_mek(admin_user)
    call_command("tls_ensure")
    before = settings.PAM_TLS_CERT.read_bytes()
    before_audit = AuditEvent.objects.count()
    with mock.patch("pamportal.nodes.services.node_tls_files_write", side_effect=OSError("disk full")):
        with pytest.raises(OSError):
            wizard.setup_finalise(user=admin_user)
    node = node_current()
    assert not node.finalised and node.finalised_at is None
    assert not Certificate.objects.exists()
    assert AuditEvent.objects.count() == before_audit
    assert not events(AuditAction.CA_CREATED) and not events(AuditAction.SETUP_FINALISED)
    assert settings.PAM_TLS_CERT.read_bytes() == before
    # Failing half-way through the second certificate leaves nothing either.
    with mock.patch("pamportal.crypto.ca.issue_node_certificate", side_effect=ValueError("boom")):
        with pytest.raises(ValueError):
            wizard.setup_finalise(user=admin_user)
    assert not Certificate.objects.exists() and not node_current().finalised
    # And it still works afterwards.
    wizard.setup_finalise(user=admin_user)
    assert node_current().finalised and Certificate.objects.count() == 2


def test_tls_ensure_restores_the_ca_signed_certificate_of_a_finalised_node(admin_user, data_dir):
    through_mek(admin_user)
    wizard.setup_finalise(user=admin_user)
    served = settings.PAM_TLS_CERT.read_bytes()
    settings.PAM_TLS_CERT.unlink()
    settings.PAM_TLS_KEY.unlink()
    call_command("tls_ensure")
    assert settings.PAM_TLS_CERT.read_bytes() == served
    assert ca.key_matches(served, settings.PAM_TLS_KEY.read_bytes())
    call_command("tls_ensure", "--force")
    assert settings.PAM_TLS_CERT.read_bytes() == served


def _mek_forms(key: bytes) -> list[str]:
    encoded = mek.encode(key)
    compact = encoded.replace("-", "")
    body32 = base64.b32encode(key).decode().rstrip("=")
    forms = [encoded, compact, body32, key.hex(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode()]
    forms += [f.lower() for f in forms] + [" ".join(encoded.split("-"))]
    # Any four consecutive groups would be enough to narrow the key down a lot.
    groups = encoded.split("-")
    forms += ["-".join(groups[i:i + 4]) for i in range(0, 11)]
    return forms


def _walk_whole_wizard(admin, admin_user) -> bytes:
    """Every step after the administrator, through the pages."""
    admin.post(reverse("setup:node"), {"address": ADDRESS, "ntp_servers": "\n".join(NTP)})
    admin.post(reverse("setup:preflight_start"))
    finish_preflight(wizard.setup_preflight_start(user=admin_user))
    admin.post(reverse("setup:preflight_next"))
    admin.post(reverse("setup:licence"), {"licence_file": licence_file()})
    admin.post(reverse("setup:licence_next"))
    admin.post(reverse("setup:mek_generate"))
    groups = groups_in(admin.get(reverse("setup:mek")).content.decode())
    admin.post(reverse("setup:mek_download"))
    admin.post(reverse("setup:mek_download"))  # refused
    typed = "-".join(groups)
    typo = ("B" if typed[0] == "A" else "A") + typed[1:]
    admin.post(reverse("setup:mek_confirm"), {"mek": typo})
    admin.post(reverse("setup:mek_confirm"), {"mek": mek.encode(mek.generate())})
    assert admin.post(reverse("setup:mek_confirm"), {"mek": typed})["Location"] == reverse("setup:finalise")
    assert admin.post(reverse("setup:finalise"))["Location"] == reverse("nodes:dashboard")
    admin.get(reverse("nodes:dashboard"))
    admin.post(reverse("nodes:mek_check"), {"mek": typed})
    admin.post(reverse("nodes:mek_check"), {"mek": typo})
    admin.get(reverse("nodes:certificates"))
    return mek.decode(typed)


def test_the_mek_never_appears_in_logs_or_audit_details(admin, admin_user, caplog):
    caplog.set_level(logging.DEBUG)  # the root logger, every logger under it
    key = _walk_whole_wizard(admin, admin_user)
    assert node_current().finalised
    assert caplog.records, "nothing was logged: the capture is not working"
    logged = "\n".join(
        [caplog.text] + [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    )
    audit = "\n".join(
        f"{e.action} {e.target} {e.details}" for e in AuditEvent.objects.order_by("position")
    )
    assert "mek.checked" in audit and "mek.confirm_failed" in audit
    for form in _mek_forms(key):
        assert form not in logged, "the MEK is in the log output"
        assert form not in audit, "the MEK is in the audit trail"


def _private_der(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def test_a_dump_of_every_table_holds_no_private_key_and_no_mek(admin, admin_user):
    key = _walk_whole_wizard(admin, admin_user)
    ca_row = Certificate.objects.get(kind=CertificateKind.CLUSTER_CA)
    node_row = Certificate.objects.get(kind=CertificateKind.NODE_TLS)
    ca_key_pem = keystore.unseal(purpose="cluster-ca-key", sealed=ca_row.sealed_key)
    node_key_pem = keystore.unseal(purpose="node-tls-key", sealed=node_row.sealed_key)
    secrets_bytes = [_private_der(ca_key_pem), _private_der(node_key_pem), key]
    private_scalar = serialization.load_pem_private_key(ca_key_pem, password=None).private_numbers().private_value
    secrets_text = ["PRIVATE KEY", ca_key_pem.decode(), node_key_pem.decode(), f"{private_scalar:x}",
                    base64.b64encode(secrets_bytes[0]).decode(), *_mek_forms(key)]

    rows = 0
    tables = set(connection.introspection.table_names())
    for model in apps.get_models():
        if model._meta.db_table not in tables:  # an app whose migration is not written yet holds nothing
            continue
        objects = list(model._default_manager.all())
        rows += len(objects)
        dumped = serializers.serialize("json", objects)
        for text in secrets_text:
            assert text not in dumped, f"{model._meta.label} holds a secret in the clear"
        for obj in objects:
            for field in model._meta.concrete_fields:
                value = getattr(obj, field.attname)
                if isinstance(value, memoryview):
                    value = bytes(value)
                if isinstance(value, bytes):
                    for secret in secrets_bytes:
                        assert secret not in value, f"{model._meta.label}.{field.name} holds a secret"
    assert rows > 10 and Certificate.objects.count() == 2
    # Every table again, raw, including any without a model.
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                for value in row:
                    raw = bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
                    for secret in secrets_bytes + [t.encode() for t in secrets_text]:
                        assert secret not in raw, f"{table} holds a secret in the clear"
    # The database keeps the MEK's fingerprint, which is not the key.
    assert node_current().mek_fingerprint == mek.fingerprint(key)
    assert json.dumps(list(Certificate.objects.values())[0], default=str).count("v1:") == 1
