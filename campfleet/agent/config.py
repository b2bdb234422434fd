"""Agent settings: /etc/campfleet/agent.json on AWS, command-line flags in local mode.

Flags override the file. Every problem is one line naming the setting and what to do.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from campfleet.contracts import paths
from campfleet.contracts.agentjson import FILE_KEYS
from campfleet.contracts.ports import SHIP_PORT_BASE
from campfleet.protocol import ContainerSpec, valid_ship_id

MIN_MEMORY_MIB = 64  # less and not even the container's own init fits
MIN_PIDS = 16


class ConfigProblem(Exception):
    """One line: which setting is wrong and what is allowed."""


@dataclass
class AgentConfig:
    mux_url: str
    fleet_secret: bytes
    local: bool = False
    ship_id: str = ""  # local mode; on AWS from IMDS
    zone: str = ""
    address: str = ""
    port_base: int = SHIP_PORT_BASE
    volumes_root: Path = paths.VOLUMES_ROOT
    state_dir: Path = paths.AGENT_STATE_DIR
    heartbeat: float = 5.0
    runtime: str = "docker"
    content: Dict[str, Path] = field(default_factory=dict)  # local runtime: image -> content dir
    images: List[str] = field(default_factory=list)  # pulled at boot
    probe: Optional[ContainerSpec] = None  # started and health-checked once at boot
    poll_timeout: float = 25.0
    start_timeout: float = 120.0
    volume_timeout: float = 120.0
    region: str = ""
    ship_group_name: str = ""
    lifecycle_hook_name: str = ""
    launch_hook_name: str = ""  # warm pool: completed once prepared (into and out of the pool)
    mount_path: str = "/home/jovyan"
    docker_scope: str = ""  # several agents on one engine (campfleet local): names + labels
    imds_url: str = "http://169.254.169.254"
    # docker runtime: each attendee container's memory (MiB, no swap) and process limits;
    # 0 = no limit (campfleet.limits sets them from the stack config on AWS).
    container_memory_mib: int = 0
    container_pids_limit: int = 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="campfleet-agent",
        description="The campfleet ship agent: reports this ship to the mux and applies its "
        f"desired state. On AWS: --config {paths.AGENT_SETTINGS}. Locally: --local + flags.",
    )
    p.add_argument("--config", type=Path, help="JSON settings file (agent.json)")
    p.add_argument("--local", action="store_true", help="identity from flags, not EC2 metadata")
    p.add_argument("--mux", dest="mux_url", help="control API URL, e.g. http://10.0.0.5:8700")
    p.add_argument("--secret-file", type=Path, help="file holding the fleet secret")
    p.add_argument("--ship-id", help="ship id (local mode)")
    p.add_argument("--zone", help="zone name (local mode; default 'local')")
    p.add_argument("--address", help="address containers listen on (local: 127.0.0.1)")
    p.add_argument("--port-base", type=int, help="first container port")
    p.add_argument("--volumes-root", type=Path, help="where volumes are mounted / live")
    p.add_argument("--state-dir", type=Path, help="agent state: logs, pids, markers")
    p.add_argument("--heartbeat", type=float, help="seconds between reports (default 5)")
    p.add_argument("--runtime", choices=("local", "docker"), help="container runtime")
    p.add_argument(
        "--content",
        action="append",
        default=[],
        metavar="IMAGE=DIR",
        help="local runtime: tutorial content directory of IMAGE (repeatable)",
    )
    p.add_argument("--image", action="append", default=[], help="image to pull at boot")
    p.add_argument("--probe", help="JSON ContainerSpec started and health-checked at boot")
    p.add_argument("--poll-timeout", type=float, help="long-poll wait (match the mux, 25)")
    p.add_argument("--start-timeout", type=float, help="container health deadline (120)")
    p.add_argument("--volume-timeout", type=float, help="volume attach deadline (120)")
    p.add_argument("--imds-url", help="instance metadata base URL (tests)")
    p.add_argument(
        "--docker-scope",
        help="docker runtime: this agent's own name prefix and label, when several agents "
        "share one Docker engine (campfleet local --runtime docker)",
    )
    p.add_argument(
        "--container-memory-mib",
        type=int,
        help="docker runtime: memory limit of each container in MiB, no swap (0 = none)",
    )
    p.add_argument(
        "--container-pids-limit",
        type=int,
        help="docker runtime: most processes and threads in each container (0 = none)",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    return p


def _spec(value: Any, where: str) -> ContainerSpec:
    if not isinstance(value, dict):
        raise ConfigProblem(f'{where}: expected a JSON object like {{"name": ..., "image": ...}}')
    try:
        return ContainerSpec(**value)
    except TypeError as exc:
        raise ConfigProblem(f"{where}: {exc}") from exc


def load(argv: Optional[Sequence[str]] = None) -> tuple[AgentConfig, str]:
    """Parse flags (+ the config file); returns (config, log level)."""
    args = parser().parse_args(argv)
    values: Dict[str, Any] = {}
    if args.config:
        try:
            data = json.loads(args.config.read_text())
        except OSError as exc:
            raise ConfigProblem(f"--config {args.config}: {exc.strerror}") from exc
        except ValueError as exc:
            raise ConfigProblem(f"--config {args.config}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigProblem(f"--config {args.config}: expected a JSON object")
        for key, value in data.items():
            if key not in FILE_KEYS:
                continue  # keys for other readers of the file are fine
            attr, kind = FILE_KEYS[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ConfigProblem(f"{args.config}: {key}={value!r} has the wrong type")
            values[attr] = value
    for attr in (
        "mux_url", "secret_file", "ship_id", "zone", "address", "port_base", "volumes_root",
        "state_dir", "heartbeat", "runtime", "poll_timeout", "start_timeout", "volume_timeout",
        "imds_url", "docker_scope", "container_memory_mib", "container_pids_limit",
    ):  # fmt: skip
        if getattr(args, attr) is not None:
            values[attr] = getattr(args, attr)
    if args.probe:
        try:
            values["probe"] = json.loads(args.probe)
        except ValueError as exc:
            raise ConfigProblem(f"--probe: not valid JSON ({exc})") from exc
    values["images"] = list(values.get("images", [])) + list(args.image)

    if not values.get("mux_url"):
        raise ConfigProblem("no mux URL: pass --mux http://HOST:PORT or set muxUrl in --config")
    secret_file = Path(values.pop("secret_file", paths.FLEET_SECRET))
    try:
        secret = secret_file.read_bytes().strip()
    except OSError as exc:
        raise ConfigProblem(
            f"secret file {secret_file}: {exc.strerror}; pass --secret-file"
        ) from exc
    if not secret:
        raise ConfigProblem(f"secret file {secret_file} is empty")
    content: Dict[str, Path] = {}
    for item in args.content:
        image, sep, directory = item.partition("=")
        if not sep or not image or not Path(directory).is_dir():
            raise ConfigProblem(f"--content {item!r}: expected IMAGE=DIR with an existing DIR")
        content[image] = Path(directory)
    cfg = AgentConfig(
        mux_url=values.pop("mux_url"),
        fleet_secret=secret,
        local=args.local,
        content=content,
        probe=_spec(values.pop("probe"), "probe") if values.get("probe") else None,
        **{k: v for k, v in values.items() if k != "probe"},
    )
    cfg.volumes_root, cfg.state_dir = Path(cfg.volumes_root), Path(cfg.state_dir)
    if cfg.local:
        cfg.runtime = args.runtime or "local"
        cfg.zone = cfg.zone or "local"
        cfg.address = cfg.address or "127.0.0.1"
        if not cfg.ship_id:
            raise ConfigProblem("--local needs --ship-id (a unique name for this ship)")
        if not valid_ship_id(cfg.ship_id):
            raise ConfigProblem(
                f"--ship-id {cfg.ship_id[:64]!r}: use the form of an EC2 instance id, i- and 8 or "
                "17 hex digits (e.g. i-0123456789abcdef0); the mux accepts no other"
            )
    if cfg.runtime not in ("local", "docker"):
        raise ConfigProblem(f"runtime {cfg.runtime!r}: use local or docker")
    if cfg.docker_scope and not cfg.docker_scope.replace("-", "").replace("_", "").isalnum():
        raise ConfigProblem(f"docker-scope {cfg.docker_scope!r}: use letters, digits, - or _")
    for name in ("heartbeat", "poll_timeout", "start_timeout", "volume_timeout"):
        if getattr(cfg, name) <= 0:
            raise ConfigProblem(f"{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")
    if cfg.container_memory_mib != 0 and cfg.container_memory_mib < MIN_MEMORY_MIB:
        raise ConfigProblem(
            f"container-memory-mib {cfg.container_memory_mib}: use 0 (no limit) or at least "
            f"{MIN_MEMORY_MIB} MiB"
        )
    if cfg.container_pids_limit != 0 and cfg.container_pids_limit < MIN_PIDS:
        raise ConfigProblem(
            f"container-pids-limit {cfg.container_pids_limit}: use 0 (no limit) or at least "
            f"{MIN_PIDS}"
        )
    if not 1 <= cfg.port_base <= 65535:
        raise ConfigProblem(f"port-base {cfg.port_base} is not a TCP port")
    return cfg, args.log_level
