"""A network certificate authority and per-party TLS certificates (X.509, ECDSA P-256).

`veilpay keys` uses this to make one CA per network and one certificate per party.
A party's certificate names its party id twice, as its common name and in a
dedicated URI subjectAltName, ``veilpay:party:<id>``, which is what a link checks
(``veilpay.crypto.tls.peer_party``). It carries no host names: no DNS or IP name
that another party's certificate could share, and nothing a host-name check could
match by accident.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from veilpay.crypto.tls import PARTY_URI
from veilpay.errors import ConfigError

__all__ = ["Identity", "issue_party_certificate", "make_ca", "write_identity"]

_VALIDITY = dt.timedelta(days=825)


@dataclass(frozen=True, repr=False)
class Identity:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        return "Identity(<certificate and private key>)"


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "veilpay network"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(name: str = "veilpay network CA") -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Identity(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_party_certificate(ca: Identity, party: str) -> Identity:
    """A certificate for ``party`` valid as TLS client and server, signed by ``ca``."""
    try:
        ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
        ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    except ValueError as exc:
        raise ConfigError("the CA certificate or key is not valid PEM") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the CA key must be an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(PARTY_URI + party)]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(party))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Identity(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def write_identity(identity: Identity, cert_path: Path, key_path: Path) -> None:
    """Write the certificate (0644) and the private key (0600)."""
    cert_path.write_bytes(identity.cert_pem)
    key_path.touch(mode=0o600, exist_ok=True)
    key_path.chmod(0o600)
    key_path.write_bytes(identity.key_pem)
