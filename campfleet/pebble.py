"""Pebble (Let's Encrypt's test ACME server, Debian's `pebble`) for the mux's real ACME path.

One home for how campfleet runs Pebble: `campfleet local --tls` runs it on loopback, `campfleet
rehearse` on the rehearsal network's gateway (campfleet/rehearsal/acme.py). Both put the mux's
own TLS service (nginx + certbot, campfleet/mux/tls.py) through a real order: Pebble validates
http-01 by connecting to the identifier's port 80, as Let's Encrypt does.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path

# Pebble answers at once instead of sleeping a random 0-15 s before each validation.
ENV = {"PEBBLE_VA_NOSLEEP": "1"}


def write_config(
    path: Path,
    listen: str,
    management: str,
    certificate: Path,
    private_key: Path,
    http_port: int,
    tls_port: int,
    cert_seconds: int = 0,
) -> Path:
    """Pebble's JSON config: its ACME directory on `listen` (host:port, HTTPS with
    `certificate`), its management API (which serves the issuing root) on `management`, and
    the ports it validates http-01 and tls-alpn-01 on."""
    config: dict = {
        "listenAddress": listen,
        "managementListenAddress": management,
        "certificate": str(certificate),
        "privateKey": str(private_key),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    if cert_seconds:
        config["certificateValidityPeriod"] = cert_seconds
    path.write_text(json.dumps({"pebble": config}, indent=2))
    return path


def command(config: Path) -> list[str]:
    return ["pebble", "-config", str(config)]


def fetch_root(management: str, listener_ca: Path, timeout: float = 10) -> bytes:
    """The root Pebble issues under (made afresh at each start), from its management API at
    `management` (host:port), whose own certificate `listener_ca` vouches for."""
    context = ssl.create_default_context(cafile=str(listener_ca))
    url = f"https://{management}/roots/0"
    with urllib.request.urlopen(url, context=context, timeout=timeout) as r:
        return r.read()
