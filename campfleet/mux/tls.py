"""The mux's TLS front door: nginx in front of the proxy, certificates from ACME via certbot.

Why these two (docs/tls.md has the whole comparison): nginx reloads a new certificate
gracefully — old workers keep serving the connections they hold, so a renewal drops no open
kernel WebSocket — where Debian's Caddy 2.6.2 drops every WebSocket on a config reload and
has no ACME profiles; certbot (>= 5.3, from PyPI) orders certificates for an IP address
(`--ip-address`, with Let's Encrypt's `shortlived` profile) as well as for a domain.

certbot proves control with its standalone http-01 server on a loopback port; nginx's port 80
passes only `/.well-known/acme-challenge/` to it and redirects everything else to HTTPS, so
issuing and renewing never stop nginx. The same functions build the nginx config and the
certbot commands for `campfleet local --tls` (against Pebble) and for the mux on AWS.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from campfleet.contracts import paths
from campfleet.mux.settings import (
    Settings,
    SettingsError,
    imds_public_ip,
    load,
)

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
IP_PROFILE = "shortlived"  # Let's Encrypt issues IP certificates only in this profile
HSTS_SECONDS = 365 * 24 * 3600
# Idle kernel WebSockets must outlive nginx's proxy timeouts (JupyterLab pings, but slowly).
PROXY_IDLE_SECONDS = 3600
CHALLENGE_PATH = "/.well-known/acme-challenge/"
CHALLENGE_PORT = 8402  # certbot's standalone http-01 server on the mux, loopback only
FIRST_CERT_RETRY = (30, 60, 120, 300)  # seconds between attempts at the first certificate


class TlsError(Exception):
    """A TLS setting that cannot work; the message says which and what to do."""


def is_ip(identifier: str) -> bool:
    try:
        ipaddress.ip_address(identifier)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class FrontDoor:
    """Where nginx listens, what it forwards to, and the certificate it serves (if any yet)."""

    listen_ip: str  # 0.0.0.0 on the mux, 127.0.0.1 locally
    https_port: int  # 443 on the mux
    http_port: int  # 80 on the mux: ACME challenge + redirect only
    upstream: str  # the proxy, host:port
    challenge_port: int  # certbot's standalone http-01 server, on 127.0.0.1
    run_dir: Path  # nginx pid file and temp paths
    certificate: Optional[Path] = None  # a certbot live dir (fullchain.pem, privkey.pem)
    worker_processes: str = "auto"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "nginx.pid"


def nginx_conf(door: FrontDoor) -> str:
    """The whole nginx.conf: port 80 (challenge + redirect) and, once a certificate exists,
    HTTPS with HSTS forwarding everything (WebSockets included) to the proxy."""
    run = door.run_dir
    port_suffix = "" if door.https_port == 443 else f":{door.https_port}"
    if door.certificate is not None:
        plain = f"return 301 https://$host{port_suffix}$request_uri;"
    else:  # nothing to redirect to yet: say so instead of a connection error
        plain = 'default_type text/plain; return 503 "campfleet: waiting for a certificate\\n";'
    https = ""
    if door.certificate is not None:
        https = f"""
    server {{
        listen {door.listen_ip}:{door.https_port} ssl;
        ssl_certificate {door.certificate / "fullchain.pem"};
        ssl_certificate_key {door.certificate / "privkey.pem"};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:campfleet:10m;
        add_header Strict-Transport-Security "max-age={HSTS_SECONDS}" always;
        client_max_body_size 0;
        location / {{
            proxy_pass http://{door.upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout {PROXY_IDLE_SECONDS}s;
            proxy_send_timeout {PROXY_IDLE_SECONDS}s;
        }}
    }}
"""
    return f"""# Written by campfleet (campfleet/mux/tls.py) when the certificate changes.
worker_processes {door.worker_processes};
pid {door.pid_file};
error_log stderr warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {run / "client_body"};
    proxy_temp_path {run / "proxy"};
    fastcgi_temp_path {run / "fastcgi"};
    uwsgi_temp_path {run / "uwsgi"};
    scgi_temp_path {run / "scgi"};
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    server {{
        listen {door.listen_ip}:{door.http_port} default_server;
        location {CHALLENGE_PATH} {{
            proxy_pass http://127.0.0.1:{door.challenge_port};
            proxy_set_header Host $host;
        }}
        location / {{
            {plain}
        }}
    }}
{https}}}
"""


def nginx_command(conf: Path, run_dir: Path, *signal: str) -> list[str]:
    """nginx in the foreground (a service manager watches it), or `-s reload` etc."""
    # /usr/sbin is not on a Debian user's PATH.
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    cmd = [nginx, "-c", str(conf), "-p", str(run_dir), "-e", "stderr"]
    return [*cmd, "-s", *signal] if signal else [*cmd, "-g", "daemon off;"]


@dataclass(frozen=True)
class Acme:
    """What to ask the ACME CA for, and where certbot keeps its state."""

    identifier: str  # a domain name, or the Elastic IP
    directory: str = LETS_ENCRYPT
    email: str = ""
    config_dir: Path = paths.MUX_STATE_DIR / paths.TLS_DIR / paths.LETSENCRYPT_DIR
    challenge_port: int = CHALLENGE_PORT
    certbot: str = "certbot"
    # Per-user subdomains: the certificate also names *.identifier, which ACME CAs issue only
    # through the DNS-01 challenge (certbot-dns-route53 writes the TXT record in the zone).
    wildcard: bool = False

    @property
    def live_dir(self) -> Path:
        """certbot names the lineage after the first identifier."""
        return self.config_dir / "live" / self.identifier

    def _common(self) -> list[str]:
        return [
            "--config-dir", str(self.config_dir),
            "--work-dir", str(self.config_dir / "work"),
            "--logs-dir", str(self.config_dir / "logs"),
            "--non-interactive",
        ]  # fmt: skip

    def certonly(self) -> list[str]:
        """Order the certificate (once; later runs keep it until renewal is due)."""
        if not self.identifier:
            raise TlsError("TLS: no domain name and no IP address to certify")
        if self.wildcard and is_ip(self.identifier):
            raise TlsError("TLS: per-user subdomains need a domain name, not an IP address")
        if self.wildcard:
            prove = ["--dns-route53"]
        else:
            prove = [
                "--standalone",
                "--http-01-address", "127.0.0.1",
                "--http-01-port", str(self.challenge_port),
            ]  # fmt: skip
        cmd = [
            self.certbot, "certonly", *self._common(),
            *prove,
            "--server", self.directory,
            "--agree-tos",
            "--keep-until-expiring",
            "--key-type", "ecdsa",
        ]  # fmt: skip
        cmd += ["--email", self.email] if self.email else ["--register-unsafely-without-email"]
        if is_ip(self.identifier):
            # Let's Encrypt issues IP certificates only in its shortlived profile (~160 h);
            # "preferred" lets a CA without profiles issue its default.
            cmd += ["--ip-address", self.identifier, "--preferred-profile", IP_PROFILE]
        else:
            cmd += ["-d", self.identifier]
            if self.wildcard:
                cmd += ["-d", f"*.{self.identifier}"]
        return cmd

    def renew(self, reload_cmd: list[str], random_sleep: bool = True) -> list[str]:
        """Renew what is due (certbot: at half the lifetime of a short-lived certificate, at
        two thirds otherwise, or when the CA's ARI says so) and reload nginx only then.

        certbot waits a random time (up to 8 minutes) before renewing from a timer, to spread
        the load on the CA; a local event's minute-long test certificates cannot wait that.
        """
        return [
            self.certbot, "renew", *self._common(),
            "--deploy-hook", shlex.join(reload_cmd),
            *([] if random_sleep else ["--no-random-sleep-on-renew"]),
        ]  # fmt: skip


def stored_certificate(acme: Acme) -> bool:
    """Does certbot's live directory hold a key and a certificate, valid now, naming the
    identifier in its subject alternative names?

    certbot 5.8 reads every name of a certificate back as a DNS name, the subject CN included;
    a CA that also puts an IP identifier in the CN (Pebble 2.4 does; Let's Encrypt's
    shortlived profile has no CN) makes certbot store the certificate and then exit 1 with
    "Requested name ... is an IP address". The certificate is good: serving it beats a 503
    page, and ordering again every few minutes would only spend the CA's rate limit.
    """
    import datetime

    from cryptography import x509

    live = acme.live_dir
    try:
        cert = x509.load_pem_x509_certificate((live / "fullchain.pem").read_bytes())
        if not (live / "privkey.pem").exists():
            return False
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return False
    if is_ip(acme.identifier):
        wanted = ipaddress.ip_address(acme.identifier)
        return wanted in sans.get_values_for_type(x509.IPAddress)
    return acme.identifier in sans.get_values_for_type(x509.DNSName)


# -- the mux's service: `python -m campfleet.mux.tls serve|renew` ------------------------------


def _certbot() -> str:
    """The pinned certbot next to this Python (the venv, the mux image), not a distro one."""
    beside = Path(sys.executable).parent / "certbot"
    return str(beside) if beside.exists() else shutil.which("certbot") or "certbot"


def user_subdomains(settings: Settings) -> str:
    """The domain whose subdomains hold the attendees' servers ("" = one origin for all).

    On when mux.json's `tls` block has a domain and `userSubdomains` (the Pulumi program sets
    it with a Route 53 zone: the wildcard record and the DNS-01 challenge need one). Each
    attendee's server is then its own origin, https://<name>.<domain>/user/<name>/, so a page
    one attendee serves cannot read another's files or drive their kernel.
    """
    wanted = settings.tls or {}
    domain = str(wanted.get("domainName") or "")
    return domain if domain and wanted.get("userSubdomains") else ""


def public_origin(settings: Settings, host: str) -> str:
    """https://host[:port] as browsers reach the front door."""
    port = int((settings.tls or {}).get("httpsPort", 443))
    return f"https://{host}" + ("" if port == 443 else f":{port}")


def front_door(settings: Settings) -> tuple[Acme, FrontDoor, Path]:
    """The mux's ACME order and nginx front door from its settings' `tls` block.

    On AWS the block holds the domain (or nothing: the Elastic IP, from IMDS), the ACME
    directory and e-mail; a local event adds its loopback ports and Pebble's directory.
    """
    wanted = settings.tls or {}
    identifier = wanted.get("domainName") or imds_public_ip()
    state = settings.state_dir / paths.TLS_DIR
    acme = Acme(
        identifier=identifier,
        directory=wanted.get("acmeDirectory") or LETS_ENCRYPT,
        email=wanted.get("acmeEmail") or "",
        config_dir=state / paths.LETSENCRYPT_DIR,
        challenge_port=int(wanted.get("challengePort", CHALLENGE_PORT)),
        certbot=_certbot(),
        wildcard=bool(user_subdomains(settings)),
    )
    have = (acme.live_dir / "fullchain.pem").exists()
    door = FrontDoor(
        listen_ip=str(wanted.get("listenIp", "0.0.0.0")),
        https_port=int(wanted.get("httpsPort", 443)),
        http_port=int(wanted.get("httpPort", 80)),
        upstream=f"127.0.0.1:{settings.public_port}",
        challenge_port=acme.challenge_port,
        run_dir=state / "nginx",
        certificate=acme.live_dir if have else None,
        worker_processes=str(wanted.get("workerProcesses", "auto")),
    )
    return acme, door, state / "nginx.conf"


def serve(settings: Settings) -> int:
    """Run nginx; get the first certificate if there is none; stop gracefully on SIGTERM."""
    acme, door, conf = front_door(settings)
    door.run_dir.mkdir(parents=True, exist_ok=True)
    conf.write_text(nginx_conf(door))
    nginx = subprocess.Popen(nginx_command(conf, door.run_dir))
    stopping = threading.Event()

    def stop(*_: object) -> None:
        # docker stop / systemctl stop: nginx's graceful shutdown lets open requests finish.
        stopping.set()
        nginx.send_signal(signal.SIGQUIT)

    signal.signal(signal.SIGTERM, stop)
    attempt = 0
    while door.certificate is None and nginx.poll() is None and not stopping.is_set():
        done = subprocess.run(acme.certonly(), check=False)
        if done.returncode != 0 and stored_certificate(acme):
            print(
                f"campfleet-tls: certbot exit {done.returncode}, but it stored a valid "
                f"certificate for {acme.identifier}; serving it",
                file=sys.stderr,
                flush=True,
            )
        if done.returncode == 0 or stored_certificate(acme):
            door = dataclasses.replace(door, certificate=acme.live_dir)
            conf.write_text(nginx_conf(door))
            subprocess.run(nginx_command(conf, door.run_dir, "reload"), check=True)
            print(f"campfleet-tls: serving HTTPS for {acme.identifier}", file=sys.stderr)
            break
        wait = FIRST_CERT_RETRY[min(attempt, len(FIRST_CERT_RETRY) - 1)]
        attempt += 1
        print(
            f"campfleet-tls: no certificate for {acme.identifier} yet (certbot exit "
            f"{done.returncode}); port 80 says so; retrying in {wait} s",
            file=sys.stderr,
            flush=True,
        )
        stopping.wait(wait)
    return nginx.wait()


def renew(settings: Settings) -> int:
    """The renewal timer's job: certbot renews what is due and only then reloads nginx."""
    acme, door, conf = front_door(settings)
    random_sleep = bool((settings.tls or {}).get("renewRandomSleep", True))
    reload = nginx_command(conf, door.run_dir, "reload")
    return subprocess.run(acme.renew(reload, random_sleep), check=False).returncode


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("serve", "renew"):
        print("usage: python -m campfleet.mux.tls serve|renew [SETTINGS]", file=sys.stderr)
        return 2
    path = Path(args[1]) if len(args) > 1 else paths.MUX_SETTINGS
    try:
        settings = load(path)
        return serve(settings) if args[0] == "serve" else renew(settings)
    except (SettingsError, TlsError) as e:
        print(f"campfleet-tls: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
