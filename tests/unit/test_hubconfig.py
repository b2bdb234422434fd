"""The hub configuration built from a settings file, and the settings' own validation."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy
from traitlets import TraitError
from traitlets.config import Config

from campfleet.contracts import paths
from campfleet.contracts import secrets as contract
from campfleet.contracts.muxjson import local_block, mux_json
from campfleet.mux import fleet as fleet_mod
from campfleet.mux.hubconfig import (
    AttemptLimiter,
    WorkshopAuthenticator,
    claim_cookie,
    configure,
    hub_db_wal,
    landing_url,
)
from campfleet.mux.proxy import TOKEN_ENV, main, proxy_command
from campfleet.mux.settings import SettingsError, load, load_secrets, parse

SECRET_VALUES = {
    contract.FLEET_SECRET: "f" * 64,
    contract.PROXY_TOKEN: "p" * 64,
    contract.COOKIE_SECRET: "ab" * 32,
    contract.SHARED_PASSWORD: "room-password",
    contract.ADMIN_PASSWORD: "A" * 40,
    contract.API_TOKEN: "t" * 64,
}


def write_settings(tmp_path: Path, **overrides) -> Path:
    """A local mux.json (the shared builder) and its secret files; `overrides` replace keys of
    the document as written, so a test can write what the builder never would."""
    (tmp_path / contract.LOCAL_SECRETS_DIR).mkdir()
    for secret, value in SECRET_VALUES.items():
        (tmp_path / contract.local_file(secret)).write_text(value + "\n")
    data = mux_json(
        stack="local",
        event="test",
        region="local",
        ships=40,
        ready_percent=80,
        admin_users=["organizer"],
        control_port=18703,
        ship_image="ship:1",
        parameters={secret.key: contract.local_file(secret) for secret in SECRET_VALUES},
        heartbeat=5.0,
        lost_after=3,
        local=local_block(
            state_dir=str(tmp_path),
            volumes_root=str(tmp_path / "volumes"),
            volumes=3,
            public_port=18700,
            hub_port=18702,
            proxy_api_port=18701,
            singleuser_cmd=["/venv/bin/jupyterhub-singleuser"],
        ),
    )
    data.update(overrides)
    path = tmp_path / paths.MUX_SETTINGS_FILE
    path.write_text(json.dumps(data))
    return path


def test_configure_sets_room_hub_proxy_and_spawner(tmp_path: Path) -> None:
    c = Config()
    fleet = configure(c, write_settings(tmp_path))
    try:
        assert fleet_mod.current() is fleet
        assert tmp_path.stat().st_mode & 0o777 == 0o700  # registry holds server API tokens
        assert (fleet.expected, fleet.ready_percent, fleet.ship_image) == (40, 80, "ship:1")
        assert (fleet.control_address, fleet.control_port) == ("127.0.0.1", 18703)
        hub = c.JupyterHub
        assert (hub.ip, hub.port, hub.hub_port) == ("127.0.0.1", 18700, 18702)
        assert hub.hub_connect_url == "http://127.0.0.1:18702"
        assert hub.cleanup_servers is False
        assert hub.concurrent_spawn_limit == 40
        assert hub.authenticate_prometheus is True
        assert hub.cookie_secret == bytes.fromhex("ab" * 32)
        assert hub.spawner_class == "campfleet.mux.spawner.ShipSpawner"
        assert hub.authenticator_class is WorkshopAuthenticator
        assert hub.services == [{"name": "campfleet-admin", "api_token": "t" * 64}]
        assert "access:servers" not in hub.load_roles[0]["scopes"]
        proxy = c.ConfigurableHTTPProxy
        assert proxy.auth_token == "p" * 64
        assert proxy.should_start is False  # its own service: a hub restart leaves it running
        assert proxy.api_url == "http://127.0.0.1:18701"
        assert "command" not in proxy and "pid_file" not in proxy
        assert hub.default_url is landing_url
        auth = c.WorkshopAuthenticator
        assert auth.user_password == "room-password" and auth.admin_password == "A" * 40
        assert auth.admin_users == {"organizer"}
        assert c.ShipSpawner.cmd == ["/venv/bin/jupyterhub-singleuser"]
        assert c.Spawner.start_timeout >= 300
        assert (tmp_path / "volumes" / "vol-local-0003").is_dir()
        assert "allow_named_servers" not in hub  # no projects configured
    finally:
        fleet.registry.close()


def test_the_hub_database_runs_in_wal_mode(tmp_path: Path) -> None:
    c = Config()
    fleet = configure(c, write_settings(tmp_path))
    try:
        # The hub opens its database the way JupyterHub does: through a SQLAlchemy engine.
        engine = sqlalchemy.create_engine(c.JupyterHub.db_url)
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        engine.dispose()
        assert (mode, sync) == ("wal", 1)  # 1 = NORMAL: no fsync per commit
        assert sqlalchemy.event.contains(sqlalchemy.engine.Engine, "connect", hub_db_wal)
    finally:
        fleet.registry.close()


def test_projects_become_named_servers(tmp_path: Path) -> None:
    c = Config()
    projects = {"intro": {"image": "ship-intro:1"}, "gpu-lab": {"image": "lab:2", "cmd": ["x"]}}
    fleet = configure(c, write_settings(tmp_path, projects=projects))
    fleet.registry.close()
    assert c.ShipSpawner.projects == projects
    assert c.JupyterHub.allow_named_servers is True
    assert c.JupyterHub.named_server_limit_per_user == 0  # names are checked, not counted


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ships": "many"}, "'ships' must be a int, got str 'many'"),
        ({"readyPercent": 120}, "'readyPercent' must be 0..100, got 120"),
        ({"parameters": {"fleetSecret": "x"}}, "'parameters' lacks proxyToken, cookieSecret"),
        ({"projects": {"intro": {"cmd": []}}}, "project 'intro' has no 'image'"),
        ({"auth": "ldap"}, "'auth' must be one of shared, codes, oauth, got 'ldap'"),
        ({"auth": "oauth"}, "auth oauth needs 'oauth'"),
        (
            {
                "auth": "oauth",
                "oauth": {"provider": "generic", "clientId": "c", "callbackUrl": "u"},
            },
            "oauth (generic) lacks authorizeUrl, tokenUrl, userdataUrl",
        ),
        (
            {"auth": "oauth", "oauth": {"provider": "github", "clientId": "c", "callbackUrl": "u"}},
            "auth oauth needs parameters.oauthClientSecret",
        ),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, change: dict, message: str) -> None:
    path = write_settings(tmp_path, **change)
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(path)


def test_missing_file_and_bad_cookie_secret_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load(tmp_path / "nope.json")
    settings = load(write_settings(tmp_path))
    (tmp_path / contract.local_file(contract.COOKIE_SECRET)).write_text("not-hex")
    with pytest.raises(SettingsError, match="cookieSecret must be hex"):
        load_secrets(settings)


@pytest.mark.parametrize("secret", [contract.FLEET_SECRET, contract.PROXY_TOKEN])
def test_empty_or_short_signing_secrets_are_refused(tmp_path: Path, secret) -> None:
    settings = load(write_settings(tmp_path))
    (tmp_path / contract.local_file(secret)).write_text("short\n")
    with pytest.raises(SettingsError, match=f"{secret.key} is empty or shorter than 32 characters"):
        load_secrets(settings)


def test_aws_settings_need_the_private_address() -> None:
    data = json.loads(json.dumps({
        "stack": "prod", "event": "e", "region": "eu-west-1", "ships": 3, "readyPercent": 90,
        "adminUsers": [], "controlPort": 8700, "shipImage": "x",
        "parameters": {"fleetSecret": "/a", "proxyToken": "/b", "cookieSecret": "/c",
                       "sharedPassword": "/d"},
    }))  # fmt: skip
    with pytest.raises(SettingsError, match="no private address"):
        parse(data, "")
    settings = parse(data, "10.0.1.5")
    assert settings.control_address == "10.0.1.5"
    assert (settings.public_ip, settings.public_port, settings.is_local) == ("0.0.0.0", 80, False)


def test_idle_culler_is_a_hub_service_and_releases_ships(tmp_path: Path) -> None:
    c = Config()
    fleet = configure(c, write_settings(tmp_path, fleet={"idleMinutes": 45}))
    fleet.registry.close()
    services = {s["name"]: s for s in c.JupyterHub.services}
    culler = services["idle-culler"]["command"]
    assert culler[1:3] == ["-m", "jupyterhub_idle_culler"]
    assert "--timeout=2700" in culler and "--cull-every=300" in culler
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["idle-culler"]["services"] == ["idle-culler"]
    assert set(roles["idle-culler"]["scopes"]) == {
        "list:users",
        "read:users:activity",
        "read:servers",
        "delete:servers",
    }
    assert "campfleet-admin" in services  # the organizer token stays
    assert c.ShipSpawner.release_on_stop is True


def test_no_culler_and_ships_kept_without_fleet_settings(tmp_path: Path) -> None:
    c = Config()
    fleet = configure(c, write_settings(tmp_path, fleet={"idleMinutes": 0}))
    fleet.registry.close()
    assert [s["name"] for s in c.JupyterHub.services] == ["campfleet-admin"]
    assert "release_on_stop" not in c.ShipSpawner


@pytest.mark.parametrize(
    ("fleet", "message"),
    [
        ("demand", "'fleet' must be an object"),
        ({"idleMinutes": -1}, "fleet.idleMinutes must be a number >= 0, got -1"),
        ({"spareShips": "2"}, "fleet.spareShips must be a number >= 0, got '2'"),
        ({"mode": "auto"}, "fleet: fleet mode 'auto': expected one of fixed, demand"),
        ({"sessions": ["Mon 9-10"]}, "fleet: sessions\\[0\\]: session 'Mon 9-10'"),
        ({"timeZone": "Mars/Base"}, "fleet: time zone 'Mars/Base' is unknown"),
    ],
)
def test_bad_fleet_settings_are_one_line(tmp_path: Path, fleet: object, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load(write_settings(tmp_path, fleet=fleet))


def test_proxy_service_command_and_token(tmp_path: Path, monkeypatch) -> None:
    """The proxy's own service: the hub's ports from the settings, the token in its env only."""
    settings = load(write_settings(tmp_path))
    cmd = proxy_command(settings)
    assert cmd[2].endswith("node_modules/configurable-http-proxy/bin/configurable-http-proxy")
    assert Path(cmd[2]).exists()
    for arg in ("--ip=127.0.0.1", "--port=18700", "--api-ip=127.0.0.1", "--api-port=18701",
                "--default-target=http://127.0.0.1:18702",
                "--error-target=http://127.0.0.1:18702/hub/error",
                "--max-old-space-size=1024"):  # fmt: skip
        assert arg in cmd
    assert not any("p" * 64 in a for a in cmd)  # never on the command line (ps shows it)
    ran = {}
    monkeypatch.setattr("os.execvpe", lambda f, a, env: ran.update(cmd=a, env=env))
    main([str(tmp_path / "mux.json")])
    assert ran["cmd"] == cmd and ran["env"][TOKEN_ENV] == "p" * 64


def test_proxy_service_bad_settings_is_one_line(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("campfleet-proxy: mux settings:") and err.count("\n") == 1


def test_attempt_limiter_slides_and_stays_bounded() -> None:
    limiter = AttemptLimiter(limit=3, window=60.0, max_keys=2)
    for t in (0.0, 1.0, 2.0):
        assert limiter.retry_after("10.0.0.9", now=t) == 0.0
        limiter.add("10.0.0.9", now=t)
    assert limiter.retry_after("10.0.0.9", now=30.0) == pytest.approx(30.0)  # oldest + 60 s
    assert limiter.retry_after("10.0.0.9", now=60.5) == 0.0  # the first attempt slid out
    assert limiter.retry_after("10.0.0.8", now=30.0) == 0.0  # per address
    limiter.add("a", now=1.0)
    limiter.add("b", now=1.0)  # a third address: the stalest one is forgotten
    assert set(limiter._log) == {"a", "b"}


def test_room_gate_settings_are_validated(tmp_path: Path) -> None:
    c = Config()
    fleet = configure(c, write_settings(tmp_path))
    try:
        assert c.RoomGate.room_size == 40
        with pytest.raises(TraitError, match="room_size must be >= 0"):
            WorkshopAuthenticator(room_size=-1)
    finally:
        fleet.registry.close()


def test_oauth_mode_uses_oauthenticator_behind_the_room_gate(tmp_path: Path) -> None:
    from oauthenticator.github import GitHubOAuthenticator

    from campfleet.mux.hubconfig import RoomGate

    (tmp_path / "oauth-secret").write_text("gh-client-secret\n")
    path = write_settings(tmp_path)
    data = json.loads(path.read_text())
    data["parameters"]["oauthClientSecret"] = "oauth-secret"
    data["auth"] = "oauth"
    data["oauth"] = {
        "provider": "github",
        "clientId": "Iv1.abc",
        "callbackUrl": "https://event.example.org/hub/oauth_callback",
        "allowedUsers": ["alice"],
        "allowedOrganizations": ["workshop-org"],
    }
    path.write_text(json.dumps(data))
    c = Config()
    fleet = configure(c, path)
    try:
        cls = c.JupyterHub.authenticator_class
        assert issubclass(cls, RoomGate) and issubclass(cls, GitHubOAuthenticator)
        assert c.OAuthenticator.client_id == "Iv1.abc"
        assert c.OAuthenticator.client_secret == "gh-client-secret"
        assert c.OAuthenticator.allowed_users == {"alice"}
        assert c.GitHubOAuthenticator.allowed_organizations == {"workshop-org"}
        assert c.RoomGate.room_size == 40
        auth = cls(config=c)  # the real class accepts the whole configuration
        assert (auth.client_id, auth.room_size, auth.admin_users) == ("Iv1.abc", 40, {"organizer"})
    finally:
        fleet.registry.close()
    (tmp_path / "oauth-secret").write_text("")
    with pytest.raises(SettingsError, match="OAuth client secret is empty"):
        load_secrets(load(path))


def test_codes_book_rereads_and_refuses_clearly(tmp_path: Path) -> None:
    from campfleet.mux import codes

    issued = codes.generate(3)
    assert len(set(issued)) == 3 and all(len(c) == 11 and c[5] == "-" for c in issued)
    book = codes.file_book(tmp_path / "codes.json")
    with pytest.raises(codes.CodesError, match=r"no attendee codes in .* yet"):
        book.hashes()
    (tmp_path / "codes.json").write_text(codes.document_from_hashes([codes.code_hash(issued[0])]))
    assert book.knows(" " + issued[0].lower().replace("-", " ")) == codes.code_hash(issued[0])
    assert book.knows(issued[1]) is None
    (tmp_path / "codes.json").write_text("{}")
    book.ttl = 0
    with pytest.raises(codes.CodesError, match="unreadable"):
        book.hashes()
    with pytest.raises(codes.CodesError, match="--count must be from 1 to 5000"):
        codes.generate(0)


def test_an_expired_organizer_token_is_not_loaded(tmp_path: Path) -> None:
    """Counted from when the token was set (its file here, its SSM parameter on AWS), so a
    restart or a purge of the hub database cannot revive it."""
    import os
    import time

    path = write_settings(tmp_path, adminTokenHours=24)
    token_file = tmp_path / contract.local_file(contract.API_TOKEN)
    os.utime(token_file, (time.time() - 25 * 3600,) * 2)
    c = Config()
    fleet = configure(c, path)
    fleet.registry.close()
    assert "services" not in c.JupyterHub and "load_roles" not in c.JupyterHub
    os.utime(token_file, (time.time() - 23 * 3600,) * 2)
    c = Config()
    fleet = configure(c, path)
    fleet.registry.close()
    assert c.JupyterHub.services == [{"name": "campfleet-admin", "api_token": "t" * 64}]
    (tmp_path / "x").mkdir()
    with pytest.raises(SettingsError, match="'adminTokenHours' must be a number of hours"):
        load(write_settings(tmp_path / "x", adminTokenHours=0))


def test_aws_secrets_come_from_ssm_with_the_token_issue_time(monkeypatch) -> None:
    import time

    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    names = {
        "fleetSecret": "f" * 64,
        "proxyToken": "p" * 64,
        "cookieSecret": "ab" * 32,
        "sharedPassword": "room-password",
        "apiToken": "t" * 64,
        "oauthClientSecret": "gh-secret",
    }
    with mock_aws():
        ssm = boto3.client("ssm", region_name="eu-west-1")
        for key, value in names.items():
            ssm.put_parameter(Name=f"/campfleet/s/{key}", Value=value, Type="SecureString")
        settings = parse(
            {
                "stack": "s",
                "event": "s",
                "region": "eu-west-1",
                "ships": 3,
                "readyPercent": 90,
                "adminUsers": [],
                "controlPort": 8700,
                "shipImage": "x/ship@sha256:" + "a" * 64,
                "parameters": {key: f"/campfleet/s/{key}" for key in names},
                "auth": "oauth",
                "oauth": {"provider": "google", "clientId": "c", "callbackUrl": "https://x/cb"},
            },
            private_ip="10.0.0.10",
        )
        secrets = load_secrets(settings)
    assert (secrets.api_token, secrets.oauth_client_secret) == ("t" * 64, "gh-secret")
    assert abs(secrets.api_token_issued - time.time()) < 120


def test_two_logins_racing_for_the_last_place_do_not_both_get_it() -> None:
    """JupyterHub creates the user after authentication returns: a name admitted but not yet
    created still holds its place, so a second new name is refused meanwhile."""
    from types import SimpleNamespace

    from tornado import web

    class Db:
        def __init__(self, names: list[str]) -> None:
            self.names = names

        def query(self, _column: object) -> list[tuple[str]]:
            return [(n,) for n in self.names]

    created = ["organizer", "alice"]
    handler = SimpleNamespace(
        db=Db(created), find_user=lambda name: object() if name in created else None
    )
    gate = WorkshopAuthenticator(room_size=2, admin_users={"organizer"})
    gate.admit(handler, "bob")  # admitted; JupyterHub has not created bob yet
    with pytest.raises(web.HTTPError) as refused:
        gate.admit(handler, "carol")
    assert refused.value.status_code == 403 and "The room is full" in refused.value.log_message
    gate.admit(handler, "bob")  # the same name again (a retry) keeps its place
    gate.admit(handler, "organizer")  # organizers never count
    created.append("bob")
    created.remove("alice")  # an organizer deleted alice: her place is free again
    gate.admit(handler, "carol")


def test_attendee_servers_load_nothing_from_their_homes(tmp_path: Path) -> None:
    """disable_user_config (JUPYTERHUB_DISABLE_USER_CONFIG=1 in the server's env, which the
    agent hands to the container) and no Python user site (issue 15)."""
    c = Config()
    fleet = configure(c, write_settings(tmp_path))
    try:
        assert c.Spawner.disable_user_config is True
        assert c.Spawner.environment == {"PYTHONNOUSERSITE": "1"}
        assert "subdomain_host" not in c.JupyterHub  # one origin without a domain
        assert "--host-routing" not in proxy_command(load(tmp_path / "mux.json"))
    finally:
        fleet.registry.close()


def test_a_domain_with_its_zone_gives_each_attendee_a_subdomain(tmp_path: Path) -> None:
    tls = {"domainName": "ws.example.org", "userSubdomains": True, "httpsPort": 8443}
    path = write_settings(tmp_path, behindTls=True, tls=tls)
    c = Config()
    fleet = configure(c, path)
    try:
        assert c.JupyterHub.subdomain_host == "https://ws.example.org:8443"
        assert c.JupyterHub.cookie_host_prefix_enabled is True
        assert "--host-routing" in proxy_command(load(path))
    finally:
        fleet.registry.close()
    # A domain without the zone (no wildcard record, no DNS-01): one origin, as before.
    other = tmp_path / "other"
    other.mkdir()
    c = Config()
    fleet = configure(c, write_settings(other, behindTls=True, tls={"domainName": "a.example"}))
    try:
        assert "subdomain_host" not in c.JupyterHub
    finally:
        fleet.registry.close()


def test_the_claim_cookie_is_host_only_with_per_user_subdomains() -> None:
    """With subdomains any attendee's server can set cookies for the parent domain; a
    `__Host-` cookie (path /, no Domain) can come only from the hub's own host (issue 15)."""

    def handler(prefix: bool) -> SimpleNamespace:
        hub = SimpleNamespace(base_url="/hub/")
        return SimpleNamespace(settings={"cookie_host_prefix_enabled": prefix}, hub=hub)

    assert claim_cookie(handler(True)) == ("__Host-campfleet-name", "/")  # type: ignore[arg-type]
    assert claim_cookie(handler(False)) == ("campfleet-name", "/hub/")  # type: ignore[arg-type]
