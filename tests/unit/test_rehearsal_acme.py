"""The rehearsal's ACME CA (hook `acme-ca`): Debian's Pebble, its HTTPS vouched for by the
rehearsal CA the mux image trusts, its issuing root handed to the rehearsal's clients."""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from campfleet.local import find_free_port
from campfleet.rehearsal import acme as acme_module
from campfleet.rehearsal.acme import AcmeError, RehearsalAcme
from campfleet.rehearsal.ca import RehearsalCA


def test_pebble_serves_its_directory_trusted_through_the_rehearsal_ca(tmp_path: Path) -> None:
    if shutil.which("pebble") is None:
        pytest.skip("pebble not installed (scripts/system-deps.sh installs it)")
    ca = RehearsalCA()
    port = find_free_port(2)  # not Pebble's usual ports: other tests may hold them
    acme = RehearsalAcme("127.0.0.1", ca, tmp_path / "acme", port, port + 1)
    try:
        acme.start()
        trusting = ssl.create_default_context(cadata=ca.cert_pem.decode())
        with urllib.request.urlopen(acme.directory, context=trusting, timeout=10) as r:
            directory = json.load(r)
        assert directory["newOrder"].startswith(f"https://127.0.0.1:{port}/")
        root = x509.load_pem_x509_certificate(acme.root_pem())
        assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert acme.root_file.read_bytes() == acme.root_pem()
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(acme.directory, context=ssl.create_default_context(), timeout=10)
    finally:
        acme.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(acme.directory, context=trusting, timeout=5)


def test_without_pebble_one_line_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acme_module.shutil, "which", lambda name: None)
    with pytest.raises(AcmeError, match=r"needs Debian's pebble: run scripts/system-deps\.sh"):
        RehearsalAcme("127.0.0.1", RehearsalCA(), tmp_path).start()
