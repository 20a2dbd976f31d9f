"""The cluster CA and the certificates it issues to nodes (ECDSA P-256, X.509), and
the node's self-signed TLS certificate from before a cluster CA exists.

Pure functions over PEM bytes: no Django, no files. The caller seals private keys
before they are stored anywhere.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
NODE_DAYS = 397  # the longest validity browsers accept for a server certificate
_BACKDATE = timedelta(minutes=5)  # clocks within the cluster may differ a little


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, both PEM. The key is in the clear: seal it."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class CertificateInfo:
    subject: str
    issuer: str
    names: list[str]
    not_before: datetime
    not_after: datetime
    is_ca: bool
    serial: int
    sha256: str

    def days_left(self, now: datetime | None = None) -> int:
        now = now or datetime.now(timezone.utc)
        return (self.not_after - now).days


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def cluster_id_of(ca_sha256: str) -> str:
    """The cluster's id: the cluster is its CA, so the id is derived from the CA's hash."""
    return str(uuid.UUID(hex=ca_sha256[:32]))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name.lower())


def _key_usage(*, sign_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=sign_certificates, crl_sign=sign_certificates,
        encipher_only=False, decipher_only=False,
    )


def create_ca(*, name: str, days: int = CA_DAYS, now: datetime | None = None) -> Issued:
    """A self-signed cluster CA: CA:TRUE, path length 0 (it signs node certificates only)."""
    now = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pamportal cluster"),
        x509.NameAttribute(NameOID.COMMON_NAME, name[:64]),
    ])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def make_csr(*, names: list[str]) -> tuple[bytes, bytes]:
    """A new node key and a CSR for ``names`` (the first is the common name).
    Returns (CSR PEM, key PEM)."""
    if not names:
        raise ValueError("a certificate needs at least one name")
    key = ec.generate_private_key(ec.SECP256R1())
    unique = list(dict.fromkeys(names))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unique[0][:64])]))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in unique]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def csr_key_fingerprint(csr_pem: str) -> str:
    """SHA-256 of the CSR's public key (its DER SubjectPublicKeyInfo), as colon-separated
    hex: what the follower's page and the approvers' card both show, to compare out of
    band. Empty when the CSR does not parse."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
        der = csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, UnicodeEncodeError, TypeError):
        return ""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return ":".join(f"{b:02X}" for b in digest.finalize())


def csr_problem(csr_pem: str) -> str | None:
    """Why a follower's CSR (PEM text) cannot be signed, or None: it must parse, its
    signature verify, and its key be ECDSA P-256."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return "it is not a PEM certificate signing request"
    if not csr.is_signature_valid:
        return "its signature does not verify"
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        return "node keys are ECDSA P-256"
    return None


def sign_csr(
    *, ca_cert_pem: bytes, ca_key_pem: bytes, csr_pem: bytes, names: list[str], days: int = NODE_DAYS,
    now: datetime | None = None,
) -> bytes:
    """A node certificate for the CSR's key, for ``names`` (the CA decides the names, not
    the CSR). Server and client authentication: the delegation API uses mutual TLS.
    Never outlives the CA."""
    if not names:
        raise ValueError("a certificate needs at least one name")
    now = _now(now)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    csr = x509.load_pem_x509_csr(csr_pem)
    if not csr.is_signature_valid:
        raise ValueError("the certificate request's signature is not valid")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise ValueError("node keys are ECDSA P-256")
    unique = list(dict.fromkeys(names))
    not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pamportal node"),
            x509.NameAttribute(NameOID.COMMON_NAME, unique[0][:64]),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in unique]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign_certificates=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def issue_node_certificate(
    *, ca_cert_pem: bytes, ca_key_pem: bytes, names: list[str], days: int = NODE_DAYS, now: datetime | None = None
) -> Issued:
    """A new key and its certificate signed by the CA, in one go (the node's own)."""
    csr_pem, key_pem = make_csr(names=names)
    cert_pem = sign_csr(ca_cert_pem=ca_cert_pem, ca_key_pem=ca_key_pem, csr_pem=csr_pem, names=names, days=days, now=now)
    return Issued(cert_pem, key_pem)


def certificate_info(cert_pem: bytes) -> CertificateInfo:
    """What a certificate says. A function of the bytes alone, so the parse is kept for
    the few certificates a node shows on every dashboard (each caller gets its own
    list of names)."""
    info = _certificate_info(bytes(cert_pem))
    return replace(info, names=list(info.names))


@lru_cache(maxsize=32)
def _certificate_info(cert_pem: bytes) -> CertificateInfo:
    cert = x509.load_pem_x509_certificate(cert_pem)
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
            str(v) for v in san.get_values_for_type(x509.IPAddress)
        ]
    except x509.ExtensionNotFound:
        pass
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        names=names,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=is_ca,
        serial=cert.serial_number,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def not_after(cert_pem: bytes) -> datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def verify_issued_by(cert_pem: bytes, ca_cert_pem: bytes) -> None:
    """Raises if ``cert_pem`` was not signed by this CA (signature and issuer name)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    cert.verify_directly_issued_by(ca_cert)


def key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(serialization.Encoding.DER, spki) == key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )


# --- the node's certificate before a cluster CA exists ----------------------------------
def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name)


def self_signed_certificate(
    names: list[str], *, days: int = 397, now: datetime | None = None
) -> tuple[bytes, bytes]:
    """Return (certificate PEM, private key PEM) for the given host names/addresses:
    the node's TLS certificate before a cluster CA exists, self-signed ECDSA P-256.

    397 days is the longest validity browsers accept for a server certificate.
    """
    if not names:
        raise ValueError("a certificate needs at least one name")
    now = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pamportal node"),
        x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64]),
    ])
    unique = list(dict.fromkeys(names))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san_entry(n) for n in unique]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_key_usage(sign_certificates=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def certificate_names(cert_pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]


def certificate_not_after(cert_pem: bytes) -> datetime:
    return not_after(cert_pem)
