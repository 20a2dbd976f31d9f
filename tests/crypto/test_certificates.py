from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from pamportal.crypto.certificates import certificate_names, certificate_not_after, self_signed_certificate


def test_certificate_names_addresses_and_expiry():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cert_pem, key_pem = self_signed_certificate(["node1.example.test", "127.0.0.11", "::1", "127.0.0.11"], now=now)
    names = certificate_names(cert_pem)
    assert sorted(names) == sorted(["node1.example.test", "127.0.0.11", "::1"])
    assert certificate_not_after(cert_pem) == now + timedelta(days=397)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert b"PRIVATE KEY" in key_pem
    # Self-signed: the certificate verifies under its own key.
    cert.verify_directly_issued_by(cert)


def test_certificate_needs_a_name():
    with pytest.raises(ValueError):
        self_signed_certificate([])
