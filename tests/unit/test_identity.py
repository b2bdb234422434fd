"""campfleet.identity: AWS's RSA-2048 instance identity signature, and the test authority."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest

from campfleet import identity
from campfleet.identity import (
    DOCUMENT_PATH,
    RSA2048_PATH,
    SIGNATURE_PATH,
    IdentityRefused,
    TestIdentityAuthority,
)


@pytest.fixture(scope="module")
def authority() -> TestIdentityAuthority:
    return TestIdentityAuthority()


def _signed(authority: TestIdentityAuthority, **fields: str) -> dict[str, bytes]:
    doc = authority.document(
        fields.pop("instance_id", "i-0123456789abcdef0"),
        fields.pop("private_ip", "10.0.1.5"),
        **fields,
    )
    return authority.sign(doc)


def test_sign_gives_the_three_imds_items_in_their_formats(authority):
    items = _signed(authority, region="eu-west-1")
    assert set(items) == {DOCUMENT_PATH, SIGNATURE_PATH, RSA2048_PATH}
    doc = json.loads(items[DOCUMENT_PATH])
    assert doc["instanceId"] == "i-0123456789abcdef0" and doc["privateIp"] == "10.0.1.5"
    assert b'"region" : "eu-west-1"' in items[DOCUMENT_PATH]  # IMDS's `"key" : value` spelling
    for path in (SIGNATURE_PATH, RSA2048_PATH):
        lines = items[path].split(b"\n")
        assert all(len(line) <= 64 for line in lines) and b"BEGIN" not in items[path]
        base64.b64decode(b"".join(lines), validate=True)


def test_verify_returns_the_documents_facts(authority):
    items = _signed(authority, region="eu-west-1", pending_time="2026-12-02T10:00:00Z")
    facts = identity.verify(items[RSA2048_PATH], authority.trusted, items[DOCUMENT_PATH])
    assert facts.instance_id == "i-0123456789abcdef0"
    assert (facts.region, facts.zone, facts.private_ip) == ("eu-west-1", "eu-west-1a", "10.0.1.5")
    assert facts.pending_time == "2026-12-02T10:00:00Z"


def test_openssl_accepts_what_the_test_authority_signs(authority, tmp_path):
    """The same check AWS documents (openssl smime -verify) passes on the authority's output."""
    items = _signed(authority)
    (tmp_path / "doc").write_bytes(items[DOCUMENT_PATH])
    (tmp_path / "p7").write_bytes(
        b"-----BEGIN PKCS7-----\n" + items[RSA2048_PATH] + b"\n-----END PKCS7-----\n"
    )
    (tmp_path / "cert").write_bytes(authority.cert_pem)
    done = subprocess.run(
        ["openssl", "smime", "-verify", "-in", "p7", "-inform", "PEM", "-content", "doc",
         "-certfile", "cert", "-noverify"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_other_authority_is_refused(authority):
    items = _signed(authority)
    with pytest.raises(IdentityRefused, match="not signed by a trusted certificate"):
        identity.verify(items[RSA2048_PATH], TestIdentityAuthority().trusted)


def test_aws_certificates_do_not_trust_a_test_authority(authority):
    items = _signed(authority, region="us-east-1")
    with pytest.raises(IdentityRefused, match="not signed by a trusted certificate"):
        identity.verify(items[RSA2048_PATH], identity.load_trusted())


def test_bundled_aws_certificates_are_rsa_2048_per_region():
    trusted = identity.load_trusted()
    assert {"us-east-1", "eu-west-1", "ap-southeast-2", "us-gov-west-1"} <= set(trusted)
    assert identity.ANY_REGION not in trusted  # each AWS key signs for its own Region only
    assert {c.public_key().key_size for certs in trusted.values() for c in certs} == {2048}


def test_region_without_a_certificate_is_refused(authority):
    items = _signed(authority, region="xx-nowhere-1")
    with pytest.raises(IdentityRefused, match="no trusted certificate for region 'xx-nowhere-1'"):
        identity.verify(items[RSA2048_PATH], identity.load_trusted())


def test_altered_document_is_refused(authority):
    """Editing the embedded document (another private address) breaks the signature."""
    items = _signed(authority)
    der = base64.b64decode(b"".join(items[RSA2048_PATH].split()))
    forged = der.replace(b'"10.0.1.5"', b'"10.0.1.9"')
    assert forged != der
    with pytest.raises(IdentityRefused, match="forged or altered"):
        identity.verify(base64.b64encode(forged), authority.trusted)


def test_a_text_mode_signature_with_crlf_inside_still_verifies(authority):
    """S/MIME text mode embeds the document with CRLF line ends; the facts come from it."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    document = identity.render_document(authority.document("i-0123456789abcdef0", "10.0.1.5"))
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(document)
        .add_signer(authority.cert, authority.key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.NoCerts])
    )
    assert b'",\r\n' in der  # the embedded copy differs from IMDS's in its line ends
    facts = identity.verify(base64.b64encode(der), authority.trusted, document)
    assert facts.private_ip == "10.0.1.5"


def test_document_other_than_the_signed_one_is_refused(authority):
    items = _signed(authority)
    other = _signed(authority, instance_id="i-0fedcba9876543210")
    with pytest.raises(IdentityRefused, match="differs from the one the signature embeds"):
        identity.verify(items[RSA2048_PATH], authority.trusted, other[DOCUMENT_PATH])


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (b"%%% not base64", "not base64"),
        (base64.b64encode(b"\x30\x03\x02\x01\x01"), "not a PKCS#7 SignedData"),
        (b"A" * (identity.MAX_SIGNATURE + 4), "at most"),
    ],
)
def test_junk_signatures_get_a_reason(authority, signature, reason):
    with pytest.raises(IdentityRefused, match=reason):
        identity.verify(signature, authority.trusted)


def _ber(node: identity._Node, depth: int) -> bytes:
    """Re-encode the outer levels with indefinite lengths and a chunked OCTET STRING, as AWS's
    BER does (the signed attributes stay DER: the signature covers their encoding)."""
    if node.tag == 0x04 and len(node.value) > 16:
        chunks = [node.value[i : i + 100] for i in range(0, len(node.value), 100)]
        return b"\x24\x80" + b"".join(b"\x04" + bytes([len(c)]) + c for c in chunks) + b"\0\0"
    if not node.constructed or depth > 4 or (node.tag == 0xA0 and depth > 3):
        return node.raw
    inner = b"".join(_ber(child, depth + 1) for child in node.children)
    return bytes([node.tag]) + b"\x80" + inner + b"\0\0"


def test_ber_with_indefinite_lengths_verifies(authority):
    items = _signed(authority)
    der = base64.b64decode(b"".join(items[RSA2048_PATH].split()))
    root, _ = identity._read(der, 0)
    ber = _ber(root, 0)
    assert ber[:2] == b"\x30\x80" and ber != der  # AWS's signatures begin MIAGCSqGSIb3DQEHAqCA
    facts = identity.verify(base64.b64encode(ber), authority.trusted, items[DOCUMENT_PATH])
    assert facts.instance_id == "i-0123456789abcdef0"


def test_open_shares_one_authority_through_a_directory(tmp_path):
    first = TestIdentityAuthority.open(tmp_path / "ca")
    again = TestIdentityAuthority.open(tmp_path / "ca")
    assert again.cert_pem == first.cert_pem
    assert (tmp_path / "ca" / "key.pem").stat().st_mode & 0o777 == 0o600
    items = again.sign(again.document("i-0123456789abcdef0", "127.0.0.1"))
    trusted = identity.load_trusted(tmp_path / "ca" / "cert.pem")
    assert identity.verify(items[RSA2048_PATH], trusted).private_ip == "127.0.0.1"


def test_unreadable_trusted_file_says_what_to_do(tmp_path):
    with pytest.raises(IdentityRefused, match=r"attestation\.trustedCertificates"):
        identity.load_trusted(tmp_path / "missing.pem")
    (tmp_path / "empty.pem").write_text("nothing here\n")
    with pytest.raises(IdentityRefused, match="no PEM certificate"):
        identity.load_trusted(tmp_path / "empty.pem")
