"""The rehearsal's certificate authorities (fresh per rehearsal; this machine never trusts them).

- `RehearsalCA` signs the TLS certificate of the local AWS front (`ssm.<region>.amazonaws.com`,
  `<account>.dkr.ecr.<region>.amazonaws.com`, ...). The hosts trust it (hook
  `rehearsal-ca`, see docs/rehearsal-aws.md) so awscli, botocore, Docker and the ECR credential
  helper talk to the real AWS host names unchanged. On AWS the public CAs vouch for those names.
- `IdentityAuthority` stands in for AWS's regional instance-identity certificate: it signs each
  host's instance identity document the way EC2 does (`signature`: base64 RSA PKCS#1 v1.5 over
  SHA-256 of the document; `rsa2048`: base64 DER PKCS#7 signed-data with the document inside,
  RSA-2048 / SHA-256), so code that verifies identity documents against a configured
  certificate can be rehearsed by configuring this one.

Both keys live only in the rehearsal's work directory and die with it.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from pathlib import Path
from typing import Iterable, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID = datetime.timedelta(days=7)  # a rehearsal lasts hours; nothing outlives a week


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class RehearsalCA:
    """A throwaway CA: `cert_pem` is what hosts trust; `issue()` makes server certificates."""

    def __init__(self, common_name: str = "campfleet rehearsal CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    def issue(self, names: Iterable[str], ips: Iterable[str] = ()) -> Tuple[bytes, bytes]:
        """(certificate chain PEM, key PEM) for a TLS server answering `names` (and `ips`)."""
        names = list(names)
        if not names:
            raise ValueError("a server certificate needs at least one name")
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALID)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return _pem(cert) + self.cert_pem, _key_pem(key)

    def write(self, directory: Path, names: Iterable[str]) -> Tuple[Path, Path, Path]:
        """Write ca.pem, server.pem (chain) and server.key (0600) for `names`; their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        chain, key = self.issue(names)
        ca_path, cert_path, key_path = (
            directory / "ca.pem",
            directory / "server.pem",
            directory / "server.key",
        )
        ca_path.write_bytes(self.cert_pem)
        cert_path.write_bytes(chain)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        return ca_path, cert_path, key_path


class IdentityAuthority:
    """Signs instance identity documents as AWS's regional certificate does (see module doc)."""

    def __init__(self, region: str) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "campfleet rehearsal"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"instance identity {region} (rehearsal)"),
            ]
        )
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALID)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        """The certificate a verifier is configured with (AWS publishes one per region)."""
        return _pem(self.cert)

    def sign(self, document: bytes) -> Tuple[str, str]:
        """(`signature`, `rsa2048`) for `document`, each as IMDS serves it (base64 text)."""
        signature = self._key.sign(document, padding.PKCS1v15(), hashes.SHA256())
        der = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(document)
            .add_signer(self.cert, self._key, hashes.SHA256())
            .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.NoCerts])
        )
        return base64.b64encode(signature).decode(), _wrap64(base64.b64encode(der).decode())


def _wrap64(text: str) -> str:
    """IMDS serves the PKCS#7 blobs in 64-column lines, like a PEM body without armour."""
    return "\n".join(text[i : i + 64] for i in range(0, len(text), 64))
