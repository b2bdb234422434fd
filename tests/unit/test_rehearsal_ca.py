"""The rehearsal CA: server certificates for the AWS names that chain to it and to nothing else."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Optional

import pytest
from cryptography import x509

from campfleet.rehearsal.ca import RehearsalCA
from campfleet.rehearsal.front import aws_names, registry_host


def test_names_cover_every_service_the_hosts_call() -> None:
    names = aws_names("eu-west-1")
    for service in ("ssm", "ec2", "autoscaling", "api.ecr", "sts", "monitoring"):
        assert f"{service}.eu-west-1.amazonaws.com" in names
    assert registry_host("eu-west-1") == "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    assert registry_host("eu-west-1") in names
    assert len(names) == len(set(names))


def test_issued_certificate_chains_to_the_ca_and_names_the_hosts(tmp_path: Path) -> None:
    ca = RehearsalCA()
    _, chain, key = ca.write(tmp_path, ["ssm.eu-west-1.amazonaws.com", "ec2.x.amazonaws.com"])
    assert key.stat().st_mode & 0o077 == 0
    leaf = x509.load_pem_x509_certificates(chain.read_bytes())[0]
    leaf.verify_directly_issued_by(ca.cert)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [
        "ssm.eu-west-1.amazonaws.com",
        "ec2.x.amazonaws.com",
    ]
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(ValueError, match="at least one name"):
        ca.issue([])


def _handshake(tmp_path: Path, trust: Optional[Path], server_name: str) -> None:
    """A real TLS handshake on 127.0.0.1 against a server using a rehearsal certificate, the
    client trusting `trust` (None: the server's own rehearsal CA)."""
    ca = RehearsalCA()
    ca_path, chain, key = ca.write(tmp_path / "srv", ["ssm.eu-west-1.amazonaws.com"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(chain, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ssl.create_default_context(cafile=str(trust or ca_path))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            tls.sendall(b"x")
    finally:
        thread.join(5)
        listener.close()


def test_clients_trusting_the_ca_accept_only_its_names(tmp_path: Path) -> None:
    _handshake(tmp_path, None, "ssm.eu-west-1.amazonaws.com")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tmp_path / "b", None, "evil.example.com")


def test_clients_trusting_another_ca_refuse_it(tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    other.write_bytes(RehearsalCA().cert_pem)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tmp_path, other, "ssm.eu-west-1.amazonaws.com")
