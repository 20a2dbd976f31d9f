"""The cluster CA and the node certificates it signs."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from pamportal.crypto import ca

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def authority():
    return ca.create_ca(name="pamportal cluster CA test", now=NOW)


def test_ca_is_p256_self_signed_ca_true_pathlen_0_ten_years(authority):
    cert = x509.load_pem_x509_certificate(authority.cert_pem)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    cert.verify_directly_issued_by(cert)
    assert cert.not_valid_after_utc - NOW == timedelta(days=3650)
    assert cert.not_valid_before_utc <= NOW
    info = ca.certificate_info(authority.cert_pem)
    assert info.is_ca and "pamportal cluster CA test" in info.subject
    assert ca.key_matches(authority.cert_pem, authority.key_pem)


def test_node_certificate_is_signed_by_the_ca_with_its_names(authority):
    issued = ca.issue_node_certificate(
        ca_cert_pem=authority.cert_pem, ca_key_pem=authority.key_pem,
        names=["node1.example.com", "localhost", "127.0.0.1"], now=NOW,
    )
    ca.verify_issued_by(issued.cert_pem, authority.cert_pem)
    assert ca.key_matches(issued.cert_pem, issued.key_pem)
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node1.example.com", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert ca.certificate_info(issued.cert_pem).days_left(NOW) == 397
    assert ca.not_after(issued.cert_pem) == NOW + timedelta(days=397)


def test_a_node_certificate_never_outlives_its_ca():
    short = ca.create_ca(name="short-lived", days=10, now=NOW)
    issued = ca.issue_node_certificate(ca_cert_pem=short.cert_pem, ca_key_pem=short.key_pem, names=["10.0.0.1"], now=NOW)
    assert ca.not_after(issued.cert_pem) == ca.not_after(short.cert_pem)


def test_the_ca_decides_the_names_not_the_csr(authority):
    csr_pem, key_pem = ca.make_csr(names=["evil.example.com", "bank.example.com"])
    cert_pem = ca.sign_csr(ca_cert_pem=authority.cert_pem, ca_key_pem=authority.key_pem, csr_pem=csr_pem,
                           names=["node2.example.com"], now=NOW)
    assert ca.certificate_info(cert_pem).names == ["node2.example.com"]
    assert ca.key_matches(cert_pem, key_pem)


def test_a_certificate_from_another_ca_does_not_verify(authority):
    other = ca.create_ca(name="another CA", now=NOW)
    issued = ca.issue_node_certificate(ca_cert_pem=other.cert_pem, ca_key_pem=other.key_pem, names=["n.example.com"])
    with pytest.raises(Exception):
        ca.verify_issued_by(issued.cert_pem, authority.cert_pem)


def test_names_are_required():
    with pytest.raises(ValueError):
        ca.make_csr(names=[])


# --- the self-signed node certificate (before a cluster CA exists) -------------------------
def test_certificate_names_addresses_and_expiry():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cert_pem, key_pem = ca.self_signed_certificate(["node1.example.test", "127.0.0.11", "::1", "127.0.0.11"], now=now)
    names = ca.certificate_names(cert_pem)
    assert sorted(names) == sorted(["node1.example.test", "127.0.0.11", "::1"])
    assert ca.certificate_not_after(cert_pem) == now + timedelta(days=397)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert b"PRIVATE KEY" in key_pem
    # Self-signed: the certificate verifies under its own key.
    cert.verify_directly_issued_by(cert)


def test_certificate_needs_a_name():
    with pytest.raises(ValueError):
        ca.self_signed_certificate([])


def test_cluster_id_is_derived_from_the_ca_hash():
    assert ca.cluster_id_of("0123456789abcdef" * 4) == "01234567-89ab-cdef-0123-456789abcdef"


def test_csr_problems():
    csr_pem, _key = ca.make_csr(names=["node2.example.test"])
    assert ca.csr_problem(csr_pem.decode()) is None
    assert ca.csr_problem("not a CSR") == "it is not a PEM certificate signing request"
    assert ca.csr_problem("caf\u00e9") == "it is not a PEM certificate signing request"
