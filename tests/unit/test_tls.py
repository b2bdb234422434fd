"""The TLS front door's pure parts: nginx config (checked by nginx itself) and certbot commands."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from campfleet.local import _self_signed
from campfleet.mux import tls


def door(tmp_path: Path, certificate: Path | None, https_port: int = 443) -> tls.FrontDoor:
    return tls.FrontDoor(
        listen_ip="127.0.0.1",
        https_port=https_port,
        http_port=18080,
        upstream="127.0.0.1:8000",
        challenge_port=8402,
        run_dir=tmp_path / "run",
        certificate=certificate,
    )


def nginx_accepts(conf_text: str, tmp_path: Path) -> None:
    nginx = tls.nginx_command(tmp_path / "x.conf", tmp_path)[0]
    if not Path(nginx).exists():
        pytest.skip("nginx not installed (scripts/system-deps.sh installs it)")
    (tmp_path / "run").mkdir(exist_ok=True)
    conf = tmp_path / "nginx.conf"
    conf.write_text(conf_text)
    done = subprocess.run(
        [nginx, "-t", "-c", str(conf), "-p", str(tmp_path / "run"), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_before_a_certificate_port_80_serves_the_challenge_and_says_why(tmp_path: Path) -> None:
    text = tls.nginx_conf(door(tmp_path, None))
    assert "location /.well-known/acme-challenge/ {" in text
    assert "proxy_pass http://127.0.0.1:8402;" in text
    assert 'return 503 "campfleet: waiting for a certificate\\n";' in text
    assert "ssl" not in text and "Strict-Transport-Security" not in text
    nginx_accepts(text, tmp_path)


def test_with_a_certificate_https_hsts_websockets_and_a_redirect(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    _self_signed(live / "fullchain.pem", live / "privkey.pem")
    text = tls.nginx_conf(door(tmp_path, live, https_port=18443))
    assert "listen 127.0.0.1:18443 ssl;" in text
    assert f'add_header Strict-Transport-Security "max-age={tls.HSTS_SECONDS}" always;' in text
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "proxy_set_header Connection $connection_upgrade;" in text
    assert "proxy_set_header X-Forwarded-Proto https;" in text
    assert "return 301 https://$host:18443$request_uri;" in text
    assert "proxy_pass http://127.0.0.1:8000;" in text
    nginx_accepts(text, tmp_path)
    assert "return 301 https://$host$request_uri;" in tls.nginx_conf(door(tmp_path, live))


def test_certbot_orders_a_domain_or_an_ip_with_the_shortlived_profile(tmp_path: Path) -> None:
    domain = tls.Acme("jupyter.example.org", email="o@example.org", config_dir=tmp_path)
    cmd = domain.certonly()
    assert cmd[cmd.index("-d") + 1] == "jupyter.example.org"
    assert cmd[cmd.index("--email") + 1] == "o@example.org"
    assert cmd[cmd.index("--server") + 1] == tls.LETS_ENCRYPT
    assert cmd[cmd.index("--http-01-address") + 1] == "127.0.0.1"
    assert "--ip-address" not in cmd and "--preferred-profile" not in cmd
    assert domain.live_dir == tmp_path / "live" / "jupyter.example.org"

    ip = tls.Acme("203.0.113.7", config_dir=tmp_path).certonly()
    assert ip[ip.index("--ip-address") + 1] == "203.0.113.7"
    assert ip[ip.index("--preferred-profile") + 1] == "shortlived" and "-d" not in ip
    assert "--register-unsafely-without-email" in ip
    with pytest.raises(tls.TlsError, match="no domain name and no IP address"):
        tls.Acme("").certonly()


def test_renew_reloads_nginx_only_through_the_deploy_hook(tmp_path: Path) -> None:
    acme = tls.Acme("jupyter.example.org", config_dir=tmp_path)
    reload = tls.nginx_command(tmp_path / "nginx.conf", tmp_path / "run", "reload")
    cmd = acme.renew(reload)
    assert cmd[1] == "renew" and cmd[cmd.index("--deploy-hook") + 1].endswith(
        f"-c {tmp_path / 'nginx.conf'} -p {tmp_path / 'run'} -e stderr -s reload"
    )
    assert "--no-random-sleep-on-renew" not in cmd  # the mux's timer spreads load on the CA
    assert "--no-random-sleep-on-renew" in acme.renew(reload, random_sleep=False)


def test_service_usage_and_bad_settings_are_one_line(tmp_path: Path, capsys) -> None:
    assert tls.main([]) == 2
    assert capsys.readouterr().err.startswith("usage: python -m campfleet.mux.tls serve|renew")
    assert tls.main(["serve", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("campfleet-tls: mux settings:") and err.count("\n") == 1


def test_per_user_subdomains_order_a_wildcard_through_dns_01(tmp_path: Path) -> None:
    """Per-user subdomains: the domain and *.domain, proven with certbot-dns-route53 (ACME
    CAs issue wildcards only through DNS-01); nothing listens for http-01 (issue 15)."""
    acme = tls.Acme(identifier="ws.example.org", config_dir=tmp_path, wildcard=True)
    cmd = acme.certonly()
    assert "--dns-route53" in cmd and "--standalone" not in cmd and "--http-01-port" not in cmd
    names = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-d"]
    assert names == ["ws.example.org", "*.ws.example.org"]
    assert acme.live_dir == tmp_path / "live" / "ws.example.org"
    with pytest.raises(tls.TlsError, match="need a domain name"):
        tls.Acme(identifier="203.0.113.7", config_dir=tmp_path, wildcard=True).certonly()


def _store(live: Path, cn: str, ips: list[str], hours: float = 1.0, key: bool = True) -> None:
    """What certbot leaves in a lineage's live directory: fullchain.pem and privkey.pem."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=2))
        .not_valid_after(now + datetime.timedelta(hours=hours))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(i)) for i in ips]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    live.mkdir(parents=True, exist_ok=True)
    (live / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key:
        (live / "privkey.pem").write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def test_a_stored_ip_certificate_is_served_even_when_certbot_exits_1(tmp_path: Path) -> None:
    """Pebble 2.4 puts the IP in the CN and certbot 5.8 then exits 1 after storing it
    (tests/integration/test_tls.py pins that); the stored certificate counts if it is valid
    now and names the identifier, and only then."""
    acme = tls.Acme("203.0.113.7", config_dir=tmp_path)
    assert not tls.stored_certificate(acme)  # nothing stored
    _store(acme.live_dir, "203.0.113.7", ["203.0.113.7"], key=False)
    assert not tls.stored_certificate(acme)  # no key
    _store(acme.live_dir, "203.0.113.7", ["203.0.113.8"])
    assert not tls.stored_certificate(acme)  # another address
    _store(acme.live_dir, "203.0.113.7", ["203.0.113.7"], hours=-1)
    assert not tls.stored_certificate(acme)  # expired
    _store(acme.live_dir, "203.0.113.7", ["203.0.113.7"])
    assert tls.stored_certificate(acme)
    (acme.live_dir / "fullchain.pem").write_text("not a certificate")
    assert not tls.stored_certificate(acme)
