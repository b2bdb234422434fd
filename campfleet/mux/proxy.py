"""configurable-http-proxy as its own service, so a hub crash or restart drops no attendee.

JupyterHub normally starts the proxy as its child, and a hub restart then restarts the proxy
and cuts every open notebook connection (and with a pid file, even `cleanup_proxy = False`
kills a proxy left running). Here the hub runs with `ConfigurableHTTPProxy.should_start =
False` and the proxy is started beside it — by systemd on the mux, by `campfleet local`'s
supervisor on a laptop — with the same settings file and the same proxy token (a secret read
from SSM or the local secrets directory, never on a command line or in user data).

`python -m campfleet.mux.proxy [SETTINGS]` replaces itself with the proxy (`exec`), so the
service manager signals and watches the proxy itself.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from campfleet.contracts import paths
from campfleet.mux.settings import Settings, SettingsError, load, load_secrets
from campfleet.mux.tls import user_subdomains

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_MAX_OLD_SPACE_MB = 1024
PROXY_TIMEOUT_MS = 5 * 60 * 1000  # long-running notebook requests (uploads, big outputs)
TOKEN_ENV = "CONFIGPROXY_AUTH_TOKEN"  # how configurable-http-proxy takes its API token


def _chp_script() -> Path:
    """The pinned configurable-http-proxy: the checkout's node_modules (make local), else the
    one on PATH (the mux image puts its npm-ci'd node_modules/.bin there)."""
    checkout = REPO_ROOT / "node_modules" / "configurable-http-proxy" / "bin"
    on_path = shutil.which("configurable-http-proxy")
    for candidate in (checkout / "configurable-http-proxy", Path(on_path) if on_path else None):
        if candidate is not None and candidate.exists():
            return candidate.resolve()
    raise SettingsError(
        "configurable-http-proxy not found: run `npm ci` in the project (package.json pins it)"
    )


def hub_url(settings: Settings) -> str:
    """Where the proxy and the ships reach the hub (the control/private address)."""
    return f"http://{settings.control_address}:{settings.hub_port}"


def chp_command() -> list[str]:
    """configurable-http-proxy under node, its heap and timeouts set for hundreds of users
    (the proxy_websockets benchmark starts exactly this)."""
    node = shutil.which("node") or "node"
    return [
        node,
        f"--max-old-space-size={NODE_MAX_OLD_SPACE_MB}",
        str(_chp_script()),
        f"--timeout={PROXY_TIMEOUT_MS}",
        f"--proxy-timeout={PROXY_TIMEOUT_MS}",
        "--keep-alive-timeout=65000",
    ]


def proxy_command(settings: Settings) -> list[str]:
    """The mux's proxy: chp_command() listening where the settings say.

    The hub is the default target, so /hub/ answers the moment a restarted proxy listens,
    before the hub has put the attendees' routes back.
    """
    hub = hub_url(settings)
    return [
        *chp_command(),
        f"--ip={settings.public_ip}",
        f"--port={settings.public_port}",
        "--api-ip=127.0.0.1",
        f"--api-port={settings.proxy_api_port}",
        f"--default-target={hub}",
        f"--error-target={hub}/hub/error",
        "--log-level=info",
        # Behind nginx, pass its X-Forwarded-Proto (https) on instead of adding "http".
        *(["--no-x-forward"] if settings.behind_tls else []),
        # Per-user subdomains: JupyterHub's routes name the host (alice.<domain>/user/alice/).
        *(["--host-routing"] if user_subdomains(settings) else []),
    ]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else paths.mux_settings_path()
    try:
        settings = load(path)
        token = load_secrets(settings).proxy_token
        cmd = proxy_command(settings)
    except SettingsError as e:
        print(f"campfleet-proxy: {e}", file=sys.stderr)
        return 2
    env = {**os.environ, TOKEN_ENV: token}
    os.execvpe(cmd[0], cmd, env)  # never returns: the service manager watches the proxy
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
