"""mux.json, the mux's one settings file: built here for AWS and for a local event alike.

The Pulumi program renders it into the mux's user data (/etc/campfleet/mux.json), `campfleet
local` writes it into its state directory, and the tests build theirs here too, so the three
cannot drift apart; `campfleet.mux.settings.parse` is its one reader. It names where each
secret is (SSM parameters, or files locally), never a value.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

from campfleet.tags import STACK_TAG


def local_block(
    *,
    state_dir: str,
    volumes_root: str,
    volumes: int,
    public_port: int,
    hub_port: int,
    proxy_api_port: int,
    singleuser_cmd: Sequence[str],
    control_address: str = "127.0.0.1",
) -> Dict[str, Any]:
    """mux.json's `local` block: what only a local event has (loopback ports, directories as
    volumes, a local single-user command); its presence makes the settings local."""
    return {
        "stateDir": state_dir,
        "volumesRoot": volumes_root,
        "volumes": volumes,
        "publicPort": public_port,
        "hubPort": hub_port,
        "proxyApiPort": proxy_api_port,
        "controlAddress": control_address,
        "singleuserCmd": list(singleuser_cmd),
    }


def mux_json(
    *,
    stack: str,
    event: str,
    region: str,
    ships: int,
    ready_percent: int,
    admin_users: Sequence[str],
    control_port: int,
    ship_image: str,
    parameters: Mapping[str, str],
    heartbeat: float,
    lost_after: int,
    ship_group_name: str = "",
    auth: str = "shared",
    admin_token_hours: float = 168,
    fleet: Optional[Mapping[str, Any]] = None,
    oauth: Optional[Mapping[str, Any]] = None,
    projects: Optional[Mapping[str, Any]] = None,
    behind_tls: bool = False,
    tls: Optional[Mapping[str, Any]] = None,
    public_ip: Optional[str] = None,
    public_port: Optional[int] = None,
    hub_port: Optional[int] = None,
    local: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The settings document; optional parts are left out when not given (the reader's
    defaults apply). `local` comes from `local_block`; the listen ports (`public_ip`,
    `public_port`, `hub_port`) are the mux's on AWS, the local block's otherwise."""
    document: Dict[str, Any] = {
        "stack": stack,
        "event": event,
        "region": region,
        "ships": ships,
        "readyPercent": ready_percent,
        "adminUsers": list(admin_users),
        "controlPort": control_port,
        "shipGroupName": ship_group_name,
        "shipImage": ship_image,
        # The tag whose value (the stack) marks this stack's home volumes for the cloud adapter.
        "volumeTagKey": STACK_TAG,
        "heartbeat": heartbeat,
        "lostAfter": lost_after,
        "parameters": dict(parameters),
        "auth": auth,
        "adminTokenHours": admin_token_hours,
        "fleet": dict(fleet or {}),
        "behindTls": behind_tls,
    }
    optional = {
        "oauth": oauth,
        "projects": projects,
        "tls": tls,
        "publicIp": public_ip,
        "publicPort": public_port,
        "hubPort": hub_port,
        "local": local,
    }
    document.update(
        {
            key: dict(v) if isinstance(v, Mapping) else v
            for key, v in optional.items()
            if v is not None
        }
    )
    return document
