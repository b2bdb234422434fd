"""A real Prometheus and Alertmanager on loopback, configured from docs/monitoring.md.

Used by tests/integration/test_prometheus.py and benchmarks/alert_latency.py: Debian's
`prometheus` scrapes a local event's /hub/metrics with the organizer's token using the scrape
config and the alert rules exactly as the docs print them (only the target, the token file and
the intervals are changed), and `prometheus-alertmanager` delivers to a webhook receiver here.
Both run on free 127.0.0.1 ports with their own temporary storage and are killed at the end.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "monitoring.md"
PROMETHEUS = "prometheus"
SCRAPE_INTERVAL = "2s"
ALERTMANAGER = "prometheus-alertmanager"


def doc_block(marker: str) -> str:
    """The fenced yaml block right after the `<!-- marker: ... -->` comment in the docs."""
    text = DOC.read_text()
    found = re.search(rf"<!-- {re.escape(marker)}:[^>]*-->\s*```yaml\n(.*?)```", text, re.S)
    if found is None:
        raise AssertionError(f"{DOC}: no ```yaml block after <!-- {marker}: ... -->")
    return found.group(1)


def missing_tools() -> list[str]:
    return [tool for tool in (PROMETHEUS, ALERTMANAGER) if shutil.which(tool) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Notification:
    received: float  # time.time() when the webhook got it
    status: str  # firing | resolved
    labels: dict[str, str]
    annotations: dict[str, str]


@dataclass
class Webhook:
    """Alertmanager's webhook receiver: records every alert of every notification."""

    port: int = field(default_factory=free_port)
    notifications: list[Notification] = field(default_factory=list)
    _server: Optional[ThreadingHTTPServer] = None

    def start(self) -> None:
        received = self.notifications
        changed = threading.Condition()
        self._changed = changed

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                now = time.time()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with changed:
                    for alert in body["alerts"]:
                        received.append(
                            Notification(
                                now, alert["status"], alert["labels"], alert["annotations"]
                            )
                        )
                    changed.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait_for(self, match: Callable[[Notification], bool], timeout: float) -> Notification:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((n for n in self.notifications if match(n)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(n.status, n.labels.get("alertname")) for n in self.notifications]
                    raise AssertionError(f"no matching notification in {timeout:.0f} s: {seen}")
                self._changed.wait(left)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class Monitoring:
    """Prometheus (scraping `target` with `token`) + Alertmanager (to `webhook`), on loopback."""

    def __init__(self, workdir: Path, target: str, token: str, webhook: Webhook) -> None:
        self.workdir = workdir
        self.target = target
        self.token = token
        self.webhook = webhook
        self.prometheus_port = free_port()
        self.alertmanager_port = free_port()
        self.processes: list[subprocess.Popen] = []

    def _write_configs(self) -> tuple[Path, Path]:
        w = self.workdir
        token_file = w / "campfleet-token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        (w / "campfleet.rules.yml").write_text(doc_block("rules"))
        documented = yaml.safe_load(doc_block("scrape-config"))
        (job,) = documented["scrape_configs"]
        # A scrape may take as long as its interval: 2 s leaves a loaded machine's hub room.
        job["scrape_interval"] = job["scrape_timeout"] = SCRAPE_INTERVAL
        job["authorization"]["credentials_file"] = str(token_file)
        job["static_configs"] = [{"targets": [self.target]}]
        prometheus = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "1s"},
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [f"127.0.0.1:{self.alertmanager_port}"]}]}
                ]
            },
            "rule_files": [str(w / name) for name in documented["rule_files"]],
            "scrape_configs": [job],
        }
        alertmanager = {
            "route": {
                "receiver": "webhook",
                "group_by": ["alertname", "ship"],
                "group_wait": "0s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "webhook",
                    "webhook_configs": [
                        {"url": f"http://127.0.0.1:{self.webhook.port}/", "send_resolved": True}
                    ],
                }
            ],
        }
        (w / "prometheus.yml").write_text(yaml.safe_dump(prometheus))
        (w / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager))
        return w / "prometheus.yml", w / "alertmanager.yml"

    def check_rules(self) -> str:
        """promtool's verdict on the documented rules (promtool ships with prometheus)."""
        rules = self.workdir / "campfleet.rules.yml"
        rules.write_text(doc_block("rules"))
        result = subprocess.run(
            ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def start(self) -> None:
        prometheus_yml, alertmanager_yml = self._write_configs()
        log = (self.workdir / "alertmanager.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [
                    ALERTMANAGER,
                    f"--config.file={alertmanager_yml}",
                    f"--storage.path={self.workdir / 'alertmanager-data'}",
                    f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
                    "--cluster.listen-address=",  # no gossip port on 0.0.0.0
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log = (self.workdir / "prometheus.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={prometheus_yml}",
                    f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        for port, name in (
            (self.alertmanager_port, "alertmanager"),
            (self.prometheus_port, "prometheus"),
        ):
            self._wait_ready(port, name)

    def _wait_ready(self, port: int, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited: see {self.workdir}/{name}.log")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not ready in {timeout:.0f} s")
            time.sleep(0.2)

    def query(self, promql: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())["data"]["result"]

    def targets(self) -> list[tuple[str, str, str]]:
        """(url, health, last error) of every scrape target: why a scrape fails."""
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/targets"
        with urllib.request.urlopen(url, timeout=10) as r:
            active = json.loads(r.read())["data"]["activeTargets"]
        return [(t["scrapeUrl"], t["health"], t["lastError"]) for t in active]

    def stop(self) -> None:
        """SIGTERM both (their own process groups), then SIGKILL what did not exit."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def ship_down_round_trip(event: Any, monitoring: Monitoring, timeout: float = 60) -> dict:
    """Kill an idle ship, wait for its alert at the webhook, start a replacement, wait for the
    resolved notification; return the ship and the two delays in seconds."""
    from tests.integration.conftest import registry_of, wait_until

    try:
        wait_until(
            lambda: monitoring.query('campfleet_ships_awaiting_replacement{job="campfleet"} == 0'),
            60,
            "Prometheus to scrape the event",
        )
    except AssertionError as e:
        raise AssertionError(f"{e}; Prometheus' targets: {monitoring.targets()}") from None
    registry = registry_of(event)
    try:
        ship = next(s.ship_id for s in registry.ships() if s.owner is None)
    finally:
        registry.close()
    index = event.ship_ids().index(ship)
    killed = time.time()
    event.kill_ship(ship)

    def about(status: str) -> Callable[[Notification], bool]:
        return lambda n: (
            n.status == status
            and n.labels.get("alertname") == "CampfleetShipDown"
            and n.labels.get("ship") == ship
        )

    firing = monitoring.webhook.wait_for(about("firing"), timeout)
    replaced = time.time()
    # The Auto Scaling group's part, on loopback: a new ship on the dead one's ports.
    # A new instance id in EC2's form (the control API takes no other): first digit f.
    event.start_ship(f"i-f{ship[3:]}", index)
    resolved = monitoring.webhook.wait_for(about("resolved"), timeout)
    return {
        "ship": ship,
        "firing": firing,
        "kill_to_firing_webhook_s": round(firing.received - killed, 2),
        "replacement_start_to_resolved_webhook_s": round(resolved.received - replaced, 2),
    }
