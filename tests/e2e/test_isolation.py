"""One attendee's server must not reach another's (issue 15, part 1), attacked in Chromium.

Mallory, an attendee, puts pages in her own home through her own JupyterLab (the contents
API and a notebook cell, as any attendee can) and sends Alice the links. Two ways a page gets
served from her server, in the mux's origin:
- a `jupyter_server_config.py` in her home (`~/.jupyter`) adding her folder to the server's
  static paths: served at /user/mallory/static/..., like any server page, unsandboxed;
- an HTML file opened through her server's /files/ URL (JupyterHub lets only her through;
  jupyter_server would also send it in a sandbox: `Content-Security-Policy: sandbox
  allow-scripts`, a unique origin).
Alice, logged in with a kernel running, opens each link. The page tries to read Alice's files
(a fetch of her contents API, and a same-origin frame of it: a navigation, which JupyterHub
serves without an XSRF token), to run code in her kernel over its WebSocket (the kernel id is
given to it, as if leaked), and to set a claim cookie on / (tossing Alice's claim, which would
lock her out of her name). Every one must fail, and Alice must still log in as herself.
Before servers ignored config in their homes, the first page was served and ran code in
Alice's kernel and set the cookie; reading her files failed already (a fetch needs the
XSRF token, and jupyter_server's API answers with `frame-ancestors 'none'`).

Runs the real ship image (the Docker runtime): the home is the container's $HOME, where
Jupyter looks for config.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from campfleet.local import LocalEvent
from tests.docker_kit import SCOPE_PREFIX
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, trusting_home
from tests.e2e.jupyterlab import log_in, run_in_new_notebook
from tests.integration.conftest import Admin, make_event, stop_and_check, wait_until

pytestmark = pytest.mark.slow

ATTACK = """<!doctype html><meta charset="utf-8"><title>cat pictures</title><body>
<script>
(async () => {
  // What to attack comes in the fragment: Alice's server, her kernel, cookies to plant.
  const {victim, kernel, cookies} = JSON.parse(decodeURIComponent(location.hash.slice(1)));
  const out = {cookies: {}};
  try {
    const r = await fetch(victim + "api/contents", {credentials: "include"});
    out.fetch = r.status + " " + (await r.text()).slice(0, 300);
  } catch (e) { out.fetch = "blocked: " + e; }
  out.frame = await new Promise((resolve) => {
    const f = document.createElement("iframe");
    f.src = victim + "api/contents";
    f.onload = () => {
      try { resolve(f.contentDocument.body.innerText.slice(0, 2000)); }
      catch (e) { resolve("blocked: " + e.name); }
    };
    document.body.appendChild(f);
    setTimeout(() => resolve("blocked: timeout"), 20000);
  });
  out.websocket = await new Promise((resolve) => {
    let ws;
    try {
      const url = new URL(victim + "api/kernels/" + kernel + "/channels", location.href);
      ws = new WebSocket(url.href.replace(/^http/, "ws"));
    } catch (e) { resolve("blocked: " + e); return; }
    const id = "mallory-" + Math.random();
    ws.onopen = () => ws.send(JSON.stringify({
      header: {msg_id: id, username: "mallory", session: id, msg_type: "execute_request",
               version: "5.3", date: new Date().toISOString()},
      parent_header: {}, metadata: {}, channel: "shell", buffers: [],
      content: {code: "open('pwned-by-mallory', 'w').write('x')", silent: false,
                store_history: false, user_expressions: {}, allow_stdin: false},
    }));
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if (msg.msg_type === "execute_reply") resolve("executed: " + msg.content.status);
    };
    ws.onerror = () => resolve("blocked: error");
    ws.onclose = (e) => resolve("blocked: closed " + e.code);
    setTimeout(() => resolve("blocked: timeout"), 20000);
  });
  for (const cookie of cookies) {
    try {
      document.cookie = cookie;
      const set = document.cookie.split("; ").includes(cookie.split(";")[0]);
      out.cookies[cookie] = set ? "set" : "blocked: ignored";
    } catch (e) { out.cookies[cookie] = "blocked: " + e.name; }
  }
  window.campfleetAttack = out;
})();
</script>
"""
SERVER_CONFIG = 'c.ServerApp.extra_static_paths = ["/home/jovyan/site"]\n'
ROUTES = {
    "server config in her home": "/user/mallory/static/cats.html",
    "HTML file through /files/": "/user/mallory/files/cats.html",
}
SECRET_FILE = "alice-secret-notes.txt"


@pytest.fixture
def event(docker_images: dict[str, str], tmp_path: Path) -> Iterator[LocalEvent]:
    event = make_event(
        tmp_path,
        # A spare: on a loaded machine a docker stop can hold the agent past the (short, for
        # tests) lost deadline, and a restart then moves to another ship.
        ships=3,
        heartbeat=2.0,
        runtime="docker",
        ship_image=docker_images["ship"],
        docker_scope=f"{SCOPE_PREFIX}iso",
    )
    try:
        event.start()
        event.wait_ready(timeout=300)
        yield event
    finally:
        stop_and_check(event)


def attack_fragment(victim: str, kernel: str, cookies: list[str]) -> str:
    """The attack page's orders (its URL fragment: never sent to a server)."""
    return quote(json.dumps({"victim": victim, "kernel": kernel, "cookies": cookies}))


def attack_wins(out: dict, home: Path) -> list[str]:
    """What of the page's attack on Alice's server worked (cookies are judged by the caller)."""
    wins = []
    if SECRET_FILE in out["fetch"] or SECRET_FILE in out["frame"]:
        wins.append(f"read Alice's files ({json.dumps(out['fetch'][:80])}, frame: "
                    f"{json.dumps(out['frame'][:80])})")  # fmt: skip
    if not out["websocket"].startswith("blocked") or (home / "pwned-by-mallory").exists():
        wins.append(f"ran code in Alice's kernel ({out['websocket']})")
    return wins


def alices_kernel(alice) -> str:
    """The id of the kernel Alice's notebook runs (as if leaked to Mallory)."""
    return alice.evaluate(
        """async () => {
            const xsrf = document.cookie.split("; ").find((c) => c.startsWith("_xsrf="));
            const r = await fetch("/user/alice/api/kernels",
                                  {headers: {"X-XSRFToken": decodeURIComponent(xsrf.slice(6))}});
            return (await r.json())[0].id;
        }"""
    )


def plant(page, files: dict[str, str | None]) -> None:
    """Mallory writes files into her own home through her own server's contents API."""
    statuses = page.evaluate(
        """async (files) => {
            const xsrf = document.cookie.split("; ").find((c) => c.startsWith("_xsrf="));
            const token = decodeURIComponent(xsrf.slice(6)), done = [];
            for (const [path, text] of files) {
              const body = text === null ? {type: "directory"}
                                         : {type: "file", format: "text", content: text};
              const r = await fetch("/user/mallory/api/contents/" + path, {
                method: "PUT", body: JSON.stringify(body),
                headers: {"X-XSRFToken": token, "Content-Type": "application/json"}});
              done.push(r.status);
            }
            return done;
        }""",
        list(files.items()),
    )
    assert all(s in (200, 201) for s in statuses), statuses


def restart_server(event: LocalEvent, name: str) -> None:
    """The organizer restarts Mallory's server (or she does): it reads its config afresh."""
    admin = Admin(event)
    assert admin.api("DELETE", f"/users/{name}/server").status_code in (202, 204)
    wait_until(lambda: not admin.user(name)["servers"], 120, f"{name}'s server stopped")
    assert admin.api("POST", f"/users/{name}/server").status_code in (201, 202)
    wait_until(lambda: admin.server_ready(name), 180, f"{name}'s server ready again")


@pytest.mark.docker
def test_a_page_from_mallorys_server_cannot_reach_alices(event: LocalEvent, browser) -> None:
    mallory = browser.new_context().new_page()
    mallory.set_default_timeout(60_000)
    mallory.goto(event.url)
    log_in(mallory, "mallory", event.password)
    mallory.locator(".jp-LauncherCard").first.wait_for()
    plant(
        mallory,
        {
            "site": None,
            "site/cats.html": ATTACK,
            "site/server_config.py": SERVER_CONFIG,
            "cats.html": ATTACK,
        },
    )
    # Hidden paths are not writable through the contents API; her kernel writes anything.
    run_in_new_notebook(
        mallory,
        "import os, shutil; os.makedirs('.jupyter', exist_ok=True); "
        "shutil.copy('site/server_config.py', '.jupyter/jupyter_server_config.py'); "
        "print('planted')",
        "planted",
    )
    mallory.close()
    restart_server(event, "mallory")

    alice_context = browser.new_context(viewport={"width": 1280, "height": 800})
    alice = alice_context.new_page()
    alice.set_default_timeout(180_000)  # her first start: a container on a loaded machine
    alice.goto(event.url)
    log_in(alice, "alice", event.password)
    run_in_new_notebook(
        alice, f"open({SECRET_FILE!r}, 'w').write('s3cret'); print('saved')", "saved"
    )
    kernel = alices_kernel(alice)
    orders = attack_fragment("/user/alice/", kernel, ["campfleet-name=junk; path=/"])
    home = next(event.volumes_root.glob(f"*/{SECRET_FILE}")).parent

    succeeded: dict[str, list[str]] = {}
    served: dict[str, int] = {}
    for route, path in ROUTES.items():
        page = alice_context.new_page()
        response = page.goto(f"{event.url.rstrip('/')}{path}#{orders}")
        served[route] = response.status if response else 0
        if served[route] != 200:
            page.close()
            continue  # nothing served there: no page, no attack
        page.wait_for_function("window.campfleetAttack !== undefined", timeout=90_000)
        out = page.evaluate("window.campfleetAttack")
        page.close()
        wins = attack_wins(out, home)
        if "set" in out["cookies"].values():
            wins.append("set a campfleet-name cookie on / for the mux's origin")
        if wins:
            succeeded[route] = wins
    assert succeeded == {}, f"attacks that worked: {json.dumps(succeeded, indent=1)}"
    # The config in her home was not loaded (her server serves no such page at all) ...
    assert served["server config in her home"] == 404, served
    # ... and her files are hers alone: JupyterHub lets only her (and admins with
    # access:servers, which campfleet gives nobody) through to her server's /files/.
    assert served["HTML file through /files/"] == 403, served
    assert not (home / "pwned-by-mallory").exists()

    # Alice can still log in as herself (no tossed claim locked her out): her hub session
    # ends (it expires, or she clears it), her claim stays, she logs in again.
    kept = [c for c in alice_context.cookies() if not c["name"].startswith("jupyterhub-")]
    alice_context.clear_cookies()
    alice_context.add_cookies(kept)
    again = alice_context.new_page()
    again.goto(f"{event.url.rstrip('/')}/hub/login")
    log_in(again, "alice", event.password)


@pytest.fixture
def event_without_ws_cookie_auth(tmp_path: Path) -> Iterator[LocalEvent]:
    """A local event whose servers refuse cookie-only WebSockets (JupyterHub's
    allow_websocket_cookie_auth = False, read by jupyterhub-singleuser from its env)."""
    extra = 'c.Spawner.environment.update({"JUPYTERHUB_ALLOW_WEBSOCKET_COOKIE_AUTH": "0"})'
    event = make_event(tmp_path, ships=1, heartbeat=1.0, extra_config=extra)
    try:
        event.start()
        event.wait_ready(timeout=180)
        yield event
    finally:
        stop_and_check(event)


def test_websocket_cookie_auth_off_protects_nothing_in_chromium(
    event_without_ws_cookie_auth: LocalEvent, browser
) -> None:
    """The decision to keep JupyterHub's WebSocket cookie auth on: with it off, JupyterLab in
    Chromium still runs a cell, and a script in the origin still opens the kernel's WebSocket
    with nothing but the cookie. JupyterHub tells a WebSocket by its Sec-Fetch-Mode header,
    which Chromium does not send on the handshake, so the setting refuses nothing there;
    per-user subdomains are what keep servers apart (README, Security)."""
    event = event_without_ws_cookie_auth
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(60_000)
    page.goto(event.url)
    log_in(page, "alice", event.password)
    run_in_new_notebook(
        page, "import os; print('setting', os.environ['JUPYTERHUB_ALLOW_WEBSOCKET_COOKIE_AUTH'])",
        "setting 0",
    )  # fmt: skip
    opened = page.evaluate(
        """async () => {
            const xsrf = document.cookie.split("; ").find((c) => c.startsWith("_xsrf="));
            const r = await fetch("/user/alice/api/kernels",
                                  {headers: {"X-XSRFToken": decodeURIComponent(xsrf.slice(6))}});
            const id = (await r.json())[0].id;
            return await new Promise((resolve) => {
              const ws = new WebSocket(location.origin.replace(/^http/, "ws")
                                       + "/user/alice/api/kernels/" + id + "/channels");
              ws.onopen = () => { ws.close(); resolve("open"); };
              ws.onerror = () => resolve("refused");
              setTimeout(() => resolve("timeout"), 20000);
            });
        }"""
    )
    assert opened == "open"


# -- with a domain: per-user subdomains -------------------------------------------------------

DOMAIN = "campfleet.test"  # a reserved name (RFC 2606): resolved only by the browser's rules


@pytest.fixture
def domain_event(tmp_path: Path) -> Iterator[LocalEvent]:
    """`campfleet local --domain`: the wildcard certificate through DNS-01, host routing."""
    for tool in ("nginx", "pebble", "certutil"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} not installed (scripts/system-deps.sh installs it)")
    event = make_event(tmp_path, ships=2, heartbeat=1.0, domain=DOMAIN)
    try:
        event.start()
        event.wait_ready(timeout=180)
        yield event
    finally:
        stop_and_check(event)


@pytest.fixture
def domain_browser(domain_event: LocalEvent, tmp_path: Path) -> Iterator[object]:
    """Chromium trusting only Pebble's root, resolving the event's names to 127.0.0.1 through
    its own resolver rules (no DNS at all)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    home = trusting_home(tmp_path / "home", domain_event.ca_file)
    rules = f"--host-resolver-rules={domain_event.resolver_rules()}"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[*CHROMIUM_ARGS, rules],
            env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
            timeout=60_000,
        )
        try:
            yield browser
        finally:
            browser.close()


def test_with_a_domain_a_page_in_mallorys_origin_cannot_reach_alices(
    domain_event: LocalEvent, domain_browser
) -> None:
    """Per-user subdomains, attacked from the strongest place: a page running in Mallory's
    own origin, https://mallory.<domain>/. No real route serves her page to Alice (her server
    refuses Alice, and ignores config in her home, as the test above shows); the browser is
    given her page at her server's URL (the file as her server gives it to her), as if she
    had found a way. From there it tries Alice's files, Alice's kernel, and every cookie
    Alice's hub or server reads, set on the parent domain so it would reach them. All fail;
    Alice's own use works, and she logs in again as herself."""
    event = domain_event
    mallory_context = domain_browser.new_context()
    mallory = mallory_context.new_page()
    mallory.set_default_timeout(60_000)
    mallory.goto(event.url)
    log_in(mallory, "mallory", event.password)
    mallory.locator(".jp-LauncherCard").first.wait_for()
    assert mallory.url.startswith(event.user_url("mallory")), mallory.url  # her own origin
    plant(mallory, {"cats.html": ATTACK})
    status, page_bytes = mallory.evaluate(
        """async () => {
            const xsrf = document.cookie.split("; ").find((c) => c.startsWith("_xsrf="));
            const r = await fetch("/user/mallory/api/contents/cats.html?content=1",
                                  {headers: {"X-XSRFToken": decodeURIComponent(xsrf.slice(6))}});
            return [r.status, r.ok ? (await r.json()).content : ""];
        }"""
    )
    assert status == 200 and "campfleetAttack" in page_bytes, status
    mallory_context.close()

    alice_context = domain_browser.new_context(viewport={"width": 1280, "height": 800})
    alice = alice_context.new_page()
    alice.set_default_timeout(120_000)
    alice.goto(event.url)
    log_in(alice, "alice", event.password)
    run_in_new_notebook(
        alice, f"open({SECRET_FILE!r}, 'w').write('s3cret'); print('saved')", "saved"
    )
    assert alice.url.startswith(event.user_url("alice")), alice.url
    kernel = alices_kernel(alice)
    home = next(event.volumes_root.glob(f"*/{SECRET_FILE}")).parent

    # The real route to Mallory's file: her server sends Alice to the hub, which refuses.
    real = alice_context.new_page()
    response = real.goto(event.user_url("mallory") + "files/cats.html")
    assert response is not None and response.status == 403, response and response.status
    real.close()

    # Every cookie Alice's hub or server reads, planted by name on the parent domain (and
    # bare, without __Host-), at the path Alice's copy has.
    readers = [f"{event.url}hub/", event.user_url("alice")]
    genuine = {c["name"]: c["path"] for c in alice_context.cookies(readers)}
    assert any(name.startswith("__Host-jupyterhub-") for name in genuine), genuine
    attempts = sorted(
        f"{name}=junk; Domain={DOMAIN}; Path={path}; Secure"
        for cookie, path in genuine.items()
        for name in {cookie, cookie.removeprefix("__Host-")}
    )

    page_url = event.user_url("mallory") + "cats.html"
    alice_context.route(
        page_url, lambda route: route.fulfill(status=200, content_type="text/html", body=page_bytes)
    )
    page = alice_context.new_page()
    page.goto(f"{page_url}#{attack_fragment(event.user_url('alice'), kernel, attempts)}")
    page.wait_for_function("window.campfleetAttack !== undefined", timeout=90_000)
    out = page.evaluate("window.campfleetAttack")
    assert page.evaluate("location.origin") == f"https://mallory.{DOMAIN}:{event.port}"
    page.close()

    wins = attack_wins(out, home)
    # The hub's _xsrf cookie is not __Host- (JupyterHub 5.4) and Mallory can add a copy; the
    # hub checks every copy's signature and uses the valid one (jupyterhub/_xsrf_utils.py),
    # and Alice's login form below posts through it.
    planted = [
        f"{c['name']} on {c['domain']}{c['path']}"
        for c in alice_context.cookies(readers)
        if c["value"] == "junk" and c["name"] in genuine and c["name"] != "_xsrf"
    ]
    if planted:
        wins.append(f"planted cookies Alice's hub or server reads: {planted}")
    assert wins == [], f"attacks that worked: {json.dumps(wins, indent=1)}; page: {out}"
    # The page did run (its own origin's cookies it could set), so the refusals are real.
    assert "set" in out["cookies"].values(), out["cookies"]

    # Alice's own pages do what Mallory's could not: read her files, open her kernel ...
    listing, socket = alice.evaluate(
        """async (kernel) => {
            const xsrf = document.cookie.split("; ").find((c) => c.startsWith("_xsrf="));
            const r = await fetch("/user/alice/api/contents",
                                  {headers: {"X-XSRFToken": decodeURIComponent(xsrf.slice(6))}});
            const socket = await new Promise((resolve) => {
              const ws = new WebSocket(location.origin.replace(/^http/, "ws")
                                       + "/user/alice/api/kernels/" + kernel + "/channels");
              ws.onopen = () => { ws.close(); resolve("open"); };
              ws.onerror = () => resolve("refused");
              setTimeout(() => resolve("timeout"), 20000);
            });
            return [await r.text(), socket];
        }""",
        kernel,
    )
    assert SECRET_FILE in listing and socket == "open", (listing[:200], socket)
    # ... and her claim on her name survived: her hub session ends, she logs in again.
    kept = [c for c in alice_context.cookies() if "jupyterhub-" not in c["name"]]
    alice_context.clear_cookies()
    alice_context.add_cookies(kept)
    again = alice_context.new_page()
    again.goto(f"{event.url}hub/login")
    log_in(again, "alice", event.password)
    assert again.url.startswith(event.user_url("alice")), again.url
