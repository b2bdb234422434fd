"""The rehearsal's TLS certificate authority (fresh per rehearsal; this machine never trusts it).

`RehearsalCA` signs the TLS certificate of the local AWS front (`ssm.<region>.amazonaws.com`,
`<account>.dkr.ecr.<region>.amazonaws.com`, ...). The hosts trust it (hook `rehearsal-ca`,
docs/rehearsal.md) so awscli, botocore, Docker and the ECR credential helper talk to the
real AWS host names unchanged; on AWS the public CAs vouch for those names. Its key lives only
in memory and in the rehearsal's work directory, and dies with it.

(Instance identity documents are signed by campfleet.identity.TestIdentityAuthority, the one
test authority the mux's attestation can be told to trust.)
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Iterable, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID = datetime.timedelta(days=7)  # a rehearsal lasts hours; nothing outlives a week


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


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
