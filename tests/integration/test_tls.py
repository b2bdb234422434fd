"""`campfleet local --tls`: nginx + certbot against Pebble (Let's Encrypt's test CA) on loopback.

The same terminator, config builder and ACME client the mux runs. Certificates are short-lived
(Pebble's certificateValidityPeriod), so renewal and expiry happen during the test: a kernel
WebSocket opened before a renewal keeps executing code through it across the renewal and
nginx's graceful reload, and past the first certificate's expiry.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509

from campfleet.local import find_free_port
from campfleet.mux import tls
from tests.integration.conftest import Attendee, Executor, wait_until

pytestmark = pytest.mark.slow

CERT_SECONDS = 40  # certbot renews a short certificate at half its lifetime: every ~20 s


@pytest.fixture(autouse=True)
def tools() -> None:
    for tool in ("nginx", "pebble"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (scripts/system-deps.sh installs it)")


def served_certificate(port: int, ca_file: str, host: str = "localhost") -> x509.Certificate:
    """The certificate nginx serves now, verified against Pebble's root for `host`."""
    context = ssl.create_default_context(cafile=ca_file)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname=host) as conn:
        return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True))


def test_https_login_wss_kernel_survives_renewals_and_expiry(event_factory) -> None:
    event = event_factory(ships=1, heartbeat=1.0, tls=True, cert_seconds=CERT_SECONDS)
    assert event.url.startswith("https://localhost:")
    ca = str(event.ca_file)
    first = served_certificate(event.port, ca)
    assert first.not_valid_after_utc - first.not_valid_before_utc <= datetime.timedelta(
        seconds=CERT_SECONDS + 1
    )

    # Port 80's stand-in: only the ACME challenge path and a redirect to HTTPS.
    plain = f"http://127.0.0.1:{event.http_port}"
    r = requests.get(f"{plain}/hub/login?next=x", allow_redirects=False, timeout=10)
    assert r.status_code == 301
    assert r.headers["Location"] == f"https://127.0.0.1:{event.port}/hub/login?next=x"
    r = requests.get(f"{plain}/.well-known/acme-challenge/x", allow_redirects=False, timeout=10)
    assert r.status_code == 502  # passed to certbot's challenge server (none runs right now)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(event.url, timeout=10)  # not trusted without Pebble's root

    alice = Attendee(event, "alice")
    login = alice.login()
    assert login.status_code == 302
    assert login.headers["Strict-Transport-Security"] == f"max-age={tls.HSTS_SECONDS}"
    alice.start_server()
    # Every cookie the hub sets is Secure (login, session, XSRF, the name claim), and so is the
    # notebook server's login cookie; jupyter-server's own _xsrf (an anti-forgery token, not a
    # credential) is not, and HSTS keeps the browser from sending it over plain HTTP.
    cookies = {(c.name, c.path): c.secure for c in alice.http.cookies}
    assert cookies.pop(("_xsrf", "/user/alice/")) is False
    assert len(cookies) >= 5 and all(cookies.values()), cookies

    executor = Executor(alice.open_kernel(timeout=30))
    assert executor.channel.ws.sock.getpeercert()  # wss:// through nginx
    executor.start()
    wait_until(lambda: executor.answered >= 5, 30, "code running over wss")

    serials = {first.serial_number}
    expiry_passed = first.not_valid_after_utc + datetime.timedelta(seconds=2)
    while datetime.datetime.now(datetime.UTC) < expiry_passed:
        serials.add(served_certificate(event.port, ca).serial_number)
        assert not executor.error, executor.error
        time.sleep(1)
    renewed = served_certificate(event.port, ca)  # verifies: a valid certificate after expiry
    serials.add(renewed.serial_number)
    assert len(serials) >= 2, "no renewal happened before the first certificate expired"
    assert renewed.not_valid_after_utc > datetime.datetime.now(datetime.UTC)
    log = (event.log_dir / "tls.log").read_text()
    assert "Congratulations, all renewals succeeded" in log

    count_at_renewal = executor.answered
    wait_until(lambda: executor.answered > count_at_renewal + 5, 30, "code after the renewals")
    executor.stop.set()
    executor.join(timeout=60)
    executor.channel.close()
    print(
        f"renewals: {len(serials) - 1}; {executor.sent} execute requests over one wss "
        f"connection, {executor.sent - executor.answered} lost"
    )
    assert not executor.error and executor.sent == executor.answered


def test_pebble_issues_an_ip_certificate_through_the_challenge_path(event_factory) -> None:
    """The IP path (no domain): certbot --ip-address through nginx's port-80 challenge path.

    Debian's Pebble 2.4 issues for IP identifiers (RFC 8738, http-01) but has no ACME profiles
    (certbot's --preferred-profile shortlived falls back to its default) and, unlike Let's
    Encrypt's shortlived profile, puts the address in the subject CN as well; certbot then
    stores the certificate but fails reading its lineage back (it takes a CN for a DNS name).
    This test pins both facts; the renewal of an IP lineage cannot run against Pebble 2.4.
    """
    event = event_factory(ships=1, heartbeat=1.0, tls=True)
    acme = event.acme()
    ip_acme = tls.Acme(
        identifier="127.0.0.1",
        directory=acme.directory,
        config_dir=event.tls_dir / "ip-letsencrypt",
        challenge_port=acme.challenge_port,
        certbot=acme.certbot,
    )
    done = subprocess.run(
        ip_acme.certonly(),
        env=event._acme_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = done.stdout + done.stderr
    assert "--preferred-profile" in ip_acme.certonly() and "--ip-address" in ip_acme.certonly()
    issued = x509.load_pem_x509_certificate((ip_acme.live_dir / "cert.pem").read_bytes())
    sans = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == []
    assert "Pebble Intermediate CA" in issued.issuer.rfc4514_string()
    # Pebble 2.4's CN quirk, and certbot's reaction to it (see the docstring).
    assert issued.subject.rfc4514_string() == "CN=127.0.0.1"
    assert done.returncode == 1 and "Requested name 127.0.0.1 is an IP address" in output


def test_without_a_certificate_port_80_says_so_and_the_service_keeps_trying(
    tmp_path: Path,
) -> None:
    """The first order fails (the name does not point here yet, the CA is down): nginx still
    answers on port 80 with a clear line, the service retries, and nothing listens on 443."""
    from tests.unit.test_hubconfig import write_settings

    base = find_free_port(1)
    https, http, challenge, dead_acme = base, base + 5, base + 6, base + 7
    settings = write_settings(
        tmp_path,
        behindTls=True,
        tls={
            "domainName": "localhost",
            "acmeDirectory": f"https://127.0.0.1:{dead_acme}/dir",  # nothing listens there
            "listenIp": "127.0.0.1",
            "httpsPort": https,
            "httpPort": http,
            "challengePort": challenge,
            "workerProcesses": "1",
        },
    )
    service = subprocess.Popen(
        [sys.executable, "-m", "campfleet.mux.tls", "serve", str(settings)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "retrying in 30 s" not in line and time.monotonic() < deadline:
            line = service.stdout.readline()
            assert line or service.poll() is None, "the TLS service exited"
        assert line.startswith("campfleet-tls: no certificate for localhost yet (certbot exit 1)")
        r = requests.get(f"http://127.0.0.1:{http}/hub/login", timeout=10)
        assert r.status_code == 503 and r.text == "campfleet: waiting for a certificate\n"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"https://127.0.0.1:{https}/", timeout=5, verify=False)
        assert service.poll() is None  # still serving, will retry
        service.terminate()  # systemd/docker stop: at once, not after the retry wait
        assert service.wait(timeout=15) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{http}/", timeout=5)  # nginx went with it
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait(timeout=30)


def test_domain_mode_gets_a_wildcard_certificate_through_dns_01(event_factory) -> None:
    """`campfleet local --domain`: the mux's own certbot command for per-user subdomains
    (tls.Acme, wildcard) gets `<domain>` + `*.<domain>` from Pebble through DNS-01:
    certbot-dns-route53 writes the challenge's TXT record through the Route 53 stand-in,
    Pebble reads it through campfleet.localdns, certbot removes it afterwards. The one
    certificate serves the hub's name and every attendee's."""
    import boto3
    from botocore.exceptions import EndpointConnectionError

    domain = "campfleet.test"
    event = event_factory(ships=1, heartbeat=1.0, domain=domain)
    assert "--dns-route53" in event.acme().certonly()
    for host in (domain, f"alice.{domain}", f"bob.{domain}"):
        cert = served_certificate(event.port, str(event.ca_file), host)  # verified per name
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == [f"*.{domain}", domain]

    # Pebble asked the stand-in's DNS and was told both tokens (apex and wildcard share the
    # name) ...
    asked = (event.log_dir / "route53.log").read_text()
    assert f"campfleet-dns: _acme-challenge.{domain} type 16: 2 TXT" in asked, asked
    # ... and certbot cleaned the record up through the API.
    route53 = boto3.client(
        "route53",
        endpoint_url=f"http://127.0.0.1:{event.route53_port}",
        region_name="us-east-1",
        aws_access_key_id="campfleet-local",
        aws_secret_access_key="campfleet-local",
    )
    zone = route53.list_hosted_zones()["HostedZones"][0]
    records = route53.list_resource_record_sets(HostedZoneId=zone["Id"])["ResourceRecordSets"]
    assert zone["Name"] == f"{domain}." and not [r for r in records if r["Type"] == "TXT"]

    # The stand-in keeps its zone in memory: if it dies, the supervisor starts it again with
    # the zone (renewals need it).
    killed = event.kill_service("route53")

    def zone_back() -> bool:
        if event.pid_file("route53").read_text().strip() == str(killed):
            return False  # not restarted yet
        try:
            zones = route53.list_hosted_zones()["HostedZones"]
        except EndpointConnectionError:
            return False  # not listening yet
        return [z["Name"] for z in zones] == [f"{domain}."]

    wait_until(zone_back, 60, "the Route 53 stand-in back with its zone")
