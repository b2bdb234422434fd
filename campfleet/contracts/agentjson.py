"""agent.json, the ship agent's settings file: its keys, and the one builder of it.

The Pulumi program renders it into the ship user data (/etc/campfleet/agent.json) and tests
write their own with `agent_json`; `campfleet.agent.config` reads it through FILE_KEYS. The
builder takes the agent's own attribute names, so a key can be neither misspelt nor unknown.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple, Union

# agent.json key -> (AgentConfig attribute, the JSON type(s) allowed)
FILE_KEYS: Dict[str, Tuple[str, Union[type, Tuple[type, ...]]]] = {
    "muxUrl": ("mux_url", str),
    "heartbeat": ("heartbeat", (int, float)),
    "region": ("region", str),
    "runtime": ("runtime", str),
    "secretFile": ("secret_file", str),
    "stateDir": ("state_dir", str),
    "volumesRoot": ("volumes_root", str),
    "portBase": ("port_base", int),
    "images": ("images", list),
    "probe": ("probe", dict),
    "shipGroupName": ("ship_group_name", str),
    "lifecycleHookName": ("lifecycle_hook_name", str),
    "launchHookName": ("launch_hook_name", str),
    "mountPath": ("mount_path", str),
    "dockerScope": ("docker_scope", str),
    "imdsUrl": ("imds_url", str),
    "pollTimeout": ("poll_timeout", (int, float)),
    "startTimeout": ("start_timeout", (int, float)),
    "volumeTimeout": ("volume_timeout", (int, float)),
    # Each attendee container's limits (campfleet.limits, issue 15); 0 = no limit.
    "containerMemoryMiB": ("container_memory_mib", int),
    "containerPidsLimit": ("container_pids_limit", int),
}
_KEY_OF = {attribute: key for key, (attribute, _) in FILE_KEYS.items()}


def agent_json(**settings: Any) -> Dict[str, Any]:
    """agent.json from the agent's attribute names: agent_json(mux_url=..., heartbeat=5)."""
    unknown = sorted(set(settings) - set(_KEY_OF))
    if unknown:
        raise ValueError(f"agent.json has no setting {', '.join(unknown)}; see FILE_KEYS")
    return {_KEY_OF[attribute]: value for attribute, value in settings.items()}
