"""Where things live on the mux and ship hosts (and their names in a local event's directory).

The user data templates (userdata/*.yaml) write and mount these paths; tests/unit/
test_contracts.py checks the rendered user data names the same ones.
"""

from __future__ import annotations

import os
from pathlib import Path

SETTINGS_DIR = Path("/etc/campfleet")
MUX_SETTINGS_FILE = "mux.json"
AGENT_SETTINGS_FILE = "agent.json"
MUX_SETTINGS = SETTINGS_DIR / MUX_SETTINGS_FILE
AGENT_SETTINGS = SETTINGS_DIR / AGENT_SETTINGS_FILE
# Written root-only by the ship's user data from SSM; the agent signs with it.
FLEET_SECRET = SETTINGS_DIR / "fleet-secret"

# The mux's state volume: hub database, ship registry, volume assignments, certificates.
MUX_STATE_DIR = Path("/var/lib/campfleet")
REGISTRY_FILE = "registry.sqlite"
HUB_DB_FILE = "jupyterhub.sqlite"
# The TLS service sees only this part of the state volume (certbot's account and lineage, so
# a new mux keeps its certificate), never the hub's database.
TLS_DIR = "tls"
LETSENCRYPT_DIR = "letsencrypt"  # under TLS_DIR
# A local event's stand-in Auto Scaling group, in the hub's state dir: LocalCloud writes
# {"desired": n, "remove": [ship ids]}, LocalEvent.follow_group starts and stops ships to match.
LOCAL_GROUP_FILE = "group.json"

# Ships: the campfleet package copied out of the ship image, the agent's own state, and where
# attendees' home volumes are mounted.
CODE_DIR = Path("/opt/campfleet")
AGENT_STATE_DIR = Path("/var/lib/campfleet-agent")
VOLUMES_ROOT = Path("/mnt/campfleet")

# The mux image's services read mux.json from here unless this names another file.
MUX_SETTINGS_ENV = "CAMPFLEET_MUX_SETTINGS"


def mux_settings_path() -> Path:
    """The mux settings file the hub and proxy services read ($CAMPFLEET_MUX_SETTINGS)."""
    return Path(os.environ.get(MUX_SETTINGS_ENV, str(MUX_SETTINGS)))
