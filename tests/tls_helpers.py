"""Certificates for the TLS tests, made with the `cryptography` package.

One call writes a small PKI into a directory: a CA, a server certificate for
127.0.0.1/localhost (SAN IP and DNS), a client certificate with CN=device-7,
an expired client and an expired server certificate signed by the same CA, a
client certificate from a CA the broker doesn't trust, and a key that matches
none of them. EC P-256 keys keep generation fast.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class PKI:
    ca: Path                 # the CA the broker trusts (cafile)
    server: Pair             # valid for 127.0.0.1 / localhost
    server_expired: Pair
    client: Pair             # CN=device-7
    client_expired: Pair     # CN=device-old, expired yesterday
    client_untrusted: Pair   # CN=device-7, from another CA
    stray_key: Path          # matches no certificate


def _key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bwfast tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: Key, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(cn: str) -> tuple[x509.Certificate, Key]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(ca: tuple[x509.Certificate, Key], cn: str, *, server: bool,
          expired: bool = False) -> tuple[x509.Certificate, Key]:
    ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.UTC)
    if expired:
        start, end = now - dt.timedelta(days=30), now - dt.timedelta(days=1)
    else:
        start, end = now - dt.timedelta(days=1), now + dt.timedelta(days=30)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.SERVER_AUTH if server
                    else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _pair(directory: Path, name: str, made: tuple[x509.Certificate, Key]) -> Pair:
    cert, key = made
    return Pair(_write_cert(cert, directory / f"{name}.crt"),
                _write_key(key, directory / f"{name}.key"))


def make_pki(directory: Path) -> PKI:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("bwfast test CA")
    other_ca = _ca("somebody else's CA")
    return PKI(
        ca=_write_cert(ca[0], directory / "ca.crt"),
        server=_pair(directory, "server", _leaf(ca, "localhost", server=True)),
        server_expired=_pair(directory, "server-expired",
                             _leaf(ca, "localhost", server=True, expired=True)),
        client=_pair(directory, "client", _leaf(ca, "device-7", server=False)),
        client_expired=_pair(directory, "client-expired",
                             _leaf(ca, "device-old", server=False, expired=True)),
        client_untrusted=_pair(directory, "client-untrusted",
                               _leaf(other_ca, "device-7", server=False)),
        stray_key=_write_key(_key(), directory / "stray.key"),
    )
