"""The ports the mux and the ships talk on: the security groups open them, mux.json and the
agent's settings name them, and the defaults of the mux and the agent use them."""

from __future__ import annotations

CONTROL_PORT = 8700  # the mux's control API, on its private address: ships report here
HUB_API_PORT = 8081  # the hub API: single-user servers on ships call it (and OAuth)
SHIP_PORT_BASE = 8888  # the first container port on a ship: the default server's
# What the ship group opens to the mux: one port per project container, from the base up.
SHIP_PORTS = (SHIP_PORT_BASE, 8899)
