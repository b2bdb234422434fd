"""EC2 instance identity documents: verify AWS's RSA-2048 signature, and a test authority.

A ship proves which instance it is with what IMDS serves under
/latest/dynamic/instance-identity/: `document` (JSON: instanceId, privateIp, region,
pendingTime, ...) and `rsa2048`, a base64 PKCS#7 SignedData that embeds the document and is
signed (SHA-256, RSA-2048) with AWS's key for the Region. `verify` checks that signature against
the Region's certificate from a trusted set (`load_trusted`: by default AWS's published
certificates bundled in campfleet/data/aws-identity-rsa2048.pem), the way Vault's aws auth and
SPIRE's aws_iid attestor do, and returns the document's facts.

`TestIdentityAuthority` stands in for AWS where there is no EC2 (tests, `campfleet local`, the
fleet simulator, the boot rehearsal's IMDS emulator): it makes an RSA-2048 key and certificate
and signs documents in the exact IMDS formats; the mux then trusts its certificate instead.

Mux side only (uses `cryptography`); the agent just fetches and forwards the two IMDS items.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

IDENTITY_PREFIX = "/latest/dynamic/instance-identity/"
DOCUMENT_PATH = IDENTITY_PREFIX + "document"
SIGNATURE_PATH = IDENTITY_PREFIX + "signature"  # base64 SHA256withRSA over the document
RSA2048_PATH = IDENTITY_PREFIX + "rsa2048"  # base64 PKCS#7, what campfleet verifies
AWS_CERTIFICATES = "aws-identity-rsa2048.pem"  # in campfleet/data
ANY_REGION = "*"  # a trusted certificate without a `region:` line (a test authority's)
MAX_SIGNATURE = 16 * 1024  # bytes of base64; AWS's is ~2.3 kB

_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_DATA = "1.2.840.113549.1.7.1"
_OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_OID_SHA256 = "2.16.840.1.101.3.4.2.1"
_REGION_LINE = re.compile(r"^region: ([a-z0-9-]+)\s*$", re.M)
_PEM_CERT = re.compile(
    r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----", re.S
)

_BINARY = pkcs7.PKCS7Options.Binary  # sign the document's bytes as they are (no CRLF)
Trusted = Dict[str, List[x509.Certificate]]  # region (or ANY_REGION) -> certificates


class IdentityRefused(Exception):
    """The identity document or its signature is not acceptable; the text says why."""


@dataclass(frozen=True)
class IdentityDocument:
    """The facts campfleet uses from a verified instance identity document."""

    instance_id: str
    region: str
    zone: str
    private_ip: str
    account_id: str
    pending_time: str  # ISO 8601; changes when a stopped instance starts again
    instance_type: str
    image_id: str


# -- trusted certificates --------------------------------------------------------------------


def load_trusted(source: Union[str, Path, None] = None) -> Trusted:
    """Certificates by Region from a PEM file (None: AWS's bundled ones).

    A certificate after a `region: NAME` line is trusted for that Region only (AWS has one key
    per Region); one with no such line before it is trusted for every Region.
    """
    if source is None:
        text = resources.files("campfleet").joinpath("data/" + AWS_CERTIFICATES).read_text()
        where = f"campfleet/data/{AWS_CERTIFICATES}"
    else:
        try:
            text = Path(source).read_text()
        except OSError as exc:
            raise IdentityRefused(
                f"trusted certificates {source}: {exc.strerror}; "
                "point attestation.trustedCertificates at a PEM file"
            ) from exc
        where = str(source)
    trusted: Trusted = {}
    regions = [(m.start(), m.group(1)) for m in _REGION_LINE.finditer(text)]
    for match in _PEM_CERT.finditer(text):
        before = [name for at, name in regions if at < match.start()]
        region = before[-1] if before else ANY_REGION
        try:
            cert = x509.load_pem_x509_certificate(match.group(0).encode())
        except ValueError as exc:
            raise IdentityRefused(f"trusted certificates {where}: a certificate is unreadable "
                                  f"({exc})") from exc  # fmt: skip
        trusted.setdefault(region, []).append(cert)
    if not trusted:
        raise IdentityRefused(f"trusted certificates {where}: no PEM certificate in it")
    return trusted


# -- a minimal BER reader for PKCS#7 (AWS sends BER with indefinite lengths) -----------------


class _Node:
    __slots__ = ("children", "constructed", "raw", "tag", "value")

    def __init__(self, tag: int, constructed: bool, raw: bytes, value: bytes, children: list):
        self.tag, self.constructed, self.raw = tag, constructed, raw
        self.value, self.children = value, children  # value: primitive content (joined if split)


def _read(data: bytes, at: int, depth: int = 0) -> Tuple[_Node, int]:
    if depth > 32:
        raise ValueError("nested too deeply")
    start = at
    first = data[at]
    at += 1
    constructed = bool(first & 0x20)
    tag = first
    if first & 0x1F == 0x1F:  # high tag number form
        while data[at] & 0x80:
            at += 1
        at += 1
    length = data[at]
    at += 1
    children: list = []
    if length == 0x80:  # indefinite: children up to the end-of-contents octets
        if not constructed:
            raise ValueError("indefinite length on a primitive value")
        while data[at : at + 2] != b"\0\0":
            child, at = _read(data, at, depth + 1)
            children.append(child)
        end = at + 2
        body_end = at
    else:
        if length & 0x80:
            count = length & 0x7F
            if count > 4:
                raise ValueError("length too long")
            length = int.from_bytes(data[at : at + count], "big")
            at += count
        body_end = end = at + length
        if end > len(data):
            raise ValueError("truncated")
        if constructed:
            pos = at
            while pos < body_end:
                child, pos = _read(data, pos, depth + 1)
                children.append(child)
    # A constructed OCTET STRING's value is its chunks joined.
    value = b"".join(c.value for c in children) if constructed else data[at:body_end]
    return _Node(tag, constructed, data[start:end], value, children), end


def _oid(node: _Node) -> str:
    if node.tag != 0x06:
        raise ValueError("expected an OBJECT IDENTIFIER")
    raw = node.value
    parts: List[int] = []
    value = 0
    for byte in raw:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    if not parts:
        raise ValueError("empty OBJECT IDENTIFIER")
    first = min(parts[0] // 40, 2)
    return ".".join(str(p) for p in [first, parts[0] - 40 * first, *parts[1:]])


def _parse_pkcs7(der: bytes) -> Tuple[bytes, _Node]:
    """(embedded document, the signer's SignerInfo) of a PKCS#7 SignedData ContentInfo."""
    info, _ = _read(der, 0)
    if info.tag != 0x30 or len(info.children) < 2 or _oid(info.children[0]) != _OID_SIGNED_DATA:
        raise ValueError("not a PKCS#7 SignedData")
    signed = info.children[1].children[0]  # [0] EXPLICIT SignedData
    parts = signed.children
    encap = parts[2]
    if _oid(encap.children[0]) != _OID_DATA or len(encap.children) < 2:
        raise ValueError("the SignedData carries no embedded document")
    document = encap.children[1].children[0].value  # [0] EXPLICIT OCTET STRING
    signer_infos = parts[-1]
    if signer_infos.tag != 0x31 or len(signer_infos.children) != 1:
        raise ValueError("expected exactly one signer")
    return document, signer_infos.children[0]


def _verify_signer(document: bytes, signer: _Node, cert: x509.Certificate) -> None:
    """Raise InvalidSignature/ValueError unless `cert` signed `document` in this SignerInfo."""
    fields = signer.children
    if _oid(fields[2].children[0]) != _OID_SHA256:
        raise ValueError("digest algorithm is not SHA-256")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the certificate's key is not RSA")
    signature = fields[-1].value
    if fields[3].tag == 0xA0:  # signed attributes: the signature covers them (as a SET)
        attributes = fields[3]
        digest = content_type = None
        for attribute in attributes.children:
            name = _oid(attribute.children[0])
            values = attribute.children[1].children
            if name == _OID_MESSAGE_DIGEST:
                digest = values[0].value
            elif name == _OID_CONTENT_TYPE:
                content_type = _oid(values[0])
        if digest != hashlib.sha256(document).digest():
            raise ValueError("the signed digest does not match the document")
        if content_type not in (None, _OID_DATA):
            raise ValueError("the signed content type is not data")
        signed_bytes = b"\x31" + attributes.raw[1:]
    else:
        signed_bytes = document
    key.verify(signature, signed_bytes, padding.PKCS1v15(), hashes.SHA256())


def _decode_signature(signature: Union[str, bytes]) -> bytes:
    text = signature.decode("ascii", "replace") if isinstance(signature, bytes) else signature
    if len(text) > MAX_SIGNATURE:
        raise IdentityRefused(f"rsa2048 signature is {len(text)} characters; at most "
                              f"{MAX_SIGNATURE} expected")  # fmt: skip
    text = re.sub(r"-----(BEGIN|END) PKCS7-----", "", text)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise IdentityRefused(
            "rsa2048 signature is not base64 (send IMDS's rsa2048 as is)"
        ) from None


def _normal(document: bytes) -> bytes:
    """Line ends and surrounding space aside: a signer may have canonicalised the embedded
    copy to CRLF (S/MIME text mode). Only the embedded, signed copy is ever used."""
    return document.replace(b"\r\n", b"\n").strip()


def parse_document(document: bytes) -> IdentityDocument:
    """The facts of a document's JSON (not verified: see `verify`)."""
    try:
        data = json.loads(document)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        facts = {
            name: data[key]
            for name, key in (
                ("instance_id", "instanceId"),
                ("region", "region"),
                ("zone", "availabilityZone"),
                ("private_ip", "privateIp"),
                ("account_id", "accountId"),
                ("pending_time", "pendingTime"),
            )
        }
        if not all(isinstance(v, str) and v for v in facts.values()):
            raise ValueError("a required field is empty or not a string")
    except (ValueError, KeyError) as exc:
        raise IdentityRefused(f"identity document is not EC2's JSON ({exc})") from None
    return IdentityDocument(
        **facts,
        instance_type=str(data.get("instanceType", "")),
        image_id=str(data.get("imageId", "")),
    )


def verify(
    rsa2048: Union[str, bytes], trusted: Trusted, document: Optional[bytes] = None
) -> IdentityDocument:
    """The verified facts of an identity document, or IdentityRefused with the reason.

    `rsa2048` is IMDS's rsa2048 item (base64 PKCS#7 embedding the document); `document`, if
    given, must be the same text (line ends aside); the facts come from the signed copy. The
    certificate is the document's Region's (or one trusted for any Region)."""
    der = _decode_signature(rsa2048)
    try:
        embedded, signer = _parse_pkcs7(der)
    except (ValueError, IndexError) as exc:
        raise IdentityRefused(f"rsa2048 signature is not a PKCS#7 SignedData ({exc})") from None
    if document is not None and _normal(document) != _normal(embedded):
        raise IdentityRefused("identity document differs from the one the signature embeds")
    facts = parse_document(embedded)
    candidates = trusted.get(facts.region, []) + trusted.get(ANY_REGION, [])
    if not candidates:
        raise IdentityRefused(
            f"no trusted certificate for region {facts.region[:32]!r}: "
            "add it to attestation.trustedCertificates"
        )
    for cert in candidates:
        try:
            _verify_signer(embedded, signer, cert)
        except (InvalidSignature, ValueError, IndexError):
            continue
        return facts
    raise IdentityRefused(
        f"identity document of {facts.instance_id[:32]!r} is not signed by a trusted "
        f"certificate for {facts.region[:32]!r} (forged or altered)"
    )


# -- the test authority ----------------------------------------------------------------------


def render_document(fields: Mapping[str, object]) -> bytes:
    """A document's bytes as IMDS serves them (pretty JSON, `"key" : value`)."""
    return json.dumps(dict(fields), indent=2, separators=(",", " : ")).encode()


class TestIdentityAuthority:
    """Plays AWS's signing of instance identity documents (tests, local events, rehearsal).

    `sign(document)` -> {IMDS path: bytes} for DOCUMENT_PATH, SIGNATURE_PATH and RSA2048_PATH;
    `cert_pem` is what the mux must trust (attestation.trustedCertificates). `open(directory)`
    shares one authority between processes (key.pem 0600 + cert.pem).
    """

    __test__ = False  # not a pytest test class
    KEY_FILE, CERT_FILE = "key.pem", "cert.pem"

    def __init__(
        self,
        key: Optional[rsa.RSAPrivateKey] = None,
        cert: Optional[x509.Certificate] = None,
        name: str = "campfleet test identity authority",
    ) -> None:
        self.key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if cert is None:
            subject = x509.Name(
                [
                    x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                ]
            )
            now = datetime.datetime.now(datetime.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(subject)
                .public_key(self.key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .sign(self.key, hashes.SHA256())
            )
        self.cert = cert

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def trusted(self) -> Trusted:
        return {ANY_REGION: [self.cert]}

    @classmethod
    def open(cls, directory: Union[str, Path]) -> TestIdentityAuthority:
        """The authority kept in `directory`, made (and saved) on first use."""
        directory = Path(directory)
        key_file, cert_file = directory / cls.KEY_FILE, directory / cls.CERT_FILE
        if key_file.exists() and cert_file.exists():
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError(f"{key_file}: not an RSA key")
            return cls(key, x509.load_pem_x509_certificate(cert_file.read_bytes()))
        authority = cls()
        directory.mkdir(parents=True, exist_ok=True)
        pem = authority.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        cert_file.write_bytes(authority.cert_pem)
        return authority

    @staticmethod
    def document(
        instance_id: str,
        private_ip: str,
        region: str = "us-east-1",
        zone: str = "",
        account_id: str = "123456789012",
        pending_time: str = "",
        instance_type: str = "t3.medium",
        image_id: str = "ami-0123456789abcdef0",
    ) -> Dict[str, object]:
        """A document's fields in EC2's order and spelling."""
        pending = pending_time or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "accountId": account_id,
            "architecture": "x86_64",
            "availabilityZone": zone or f"{region}a",
            "billingProducts": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "imageId": image_id,
            "instanceId": instance_id,
            "instanceType": instance_type,
            "kernelId": None,
            "pendingTime": pending,
            "privateIp": private_ip,
            "ramdiskId": None,
            "region": region,
            "version": "2017-09-30",
        }

    def sign(self, document: Union[Mapping[str, object], bytes]) -> Dict[str, bytes]:
        """IMDS path -> bytes for the document and its two RSA signatures (base64 in lines of
        64 characters, no PEM armour, as IMDS serves them)."""
        raw = document if isinstance(document, bytes) else render_document(document)
        signed = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(raw)
            .add_signer(self.cert, self.key, hashes.SHA256())
            .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.NoCerts, _BINARY])
        )
        plain = self.key.sign(raw, padding.PKCS1v15(), hashes.SHA256())
        return {
            DOCUMENT_PATH: raw,
            SIGNATURE_PATH: _lines(base64.b64encode(plain)),
            RSA2048_PATH: _lines(base64.b64encode(signed)),
        }

    def write(self, directory: Union[str, Path], document: Mapping[str, object]) -> None:
        """Sign `document` into `directory` as the files `document` and `rsa2048` (what a
        local agent's --identity-dir holds)."""
        items = self.sign(document)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "document").write_bytes(items[DOCUMENT_PATH])
        (directory / "rsa2048").write_bytes(items[RSA2048_PATH])


def _lines(b64: bytes, width: int = 64) -> bytes:
    return b"\n".join(b64[i : i + width] for i in range(0, len(b64), width))
