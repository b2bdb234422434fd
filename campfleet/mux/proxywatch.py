"""Put the attendees' routes back the moment a restarted proxy comes up, and time the cut.

The proxy runs as its own service and keeps its routes in memory only: a proxy restart (a
crash, an upgrade) comes back empty, and until the hub re-adds every attendee's route their
browsers land on the hub instead of their notebook. JupyterHub re-checks routes only every
`last_activity_interval` (5 minutes by default), and that check also rewrites every user's
activity; this watch is one cheap GET to the proxy's API on loopback per second, and calls
JupyterHub's own `check_routes` only when the hub's route is missing (the mark of a proxy that
restarted). Each such cut goes to the Fleet, so the fleet page tells organizers how long
attendees were cut off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional

from campfleet.mux.fleet import Fleet

log = logging.getLogger("campfleet.proxywatch")

CHECK_INTERVAL = 1.0  # seconds between route checks; a restored route waits at most this


class ProxyWatch:
    """Check the proxy's routes every CHECK_INTERVAL; restore them and record each outage."""

    def __init__(self, fleet: Fleet, interval: float = CHECK_INTERVAL) -> None:
        self.fleet = fleet
        self.interval = interval
        self._last_ok: Optional[float] = None
        self._down_since: Optional[float] = None

    async def run(self, app: Any) -> None:
        """Run for the life of the hub; `app` is the JupyterHub application."""
        await app._start_future  # the hub's own first check_routes is done; take over from there
        while True:
            try:
                await self.check(app)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the watch must never stop, whatever one check met
                log.warning("proxywatch: route check failed: %s", e)
            await asyncio.sleep(self.interval)

    async def check(self, app: Any) -> None:
        proxy = app.proxy
        try:
            routes = await proxy.get_all_routes()
        except Exception as e:
            if self._down_since is None:
                self._down_since = self._last_ok or time.time()
                log.warning("proxywatch: the proxy does not answer (%s)", e)
            return
        if app.hub.routespec not in routes:
            started = self._down_since or self._last_ok or time.time()
            log.warning("proxywatch: the proxy came back without routes; restoring them")
            await proxy.check_routes(app.users, app._service_map, routes)
            restored = time.time()
            self.fleet.record_proxy_outage(started, restored)
        elif self._down_since is not None:
            # Unreachable for a while but its routes survived (e.g. a paused process).
            self.fleet.record_proxy_outage(self._down_since, time.time())
        self._down_since = None
        self._last_ok = time.time()
