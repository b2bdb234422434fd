"""Render the cloud-config templates in userdata/ for the mux and the ships.

Templates hold `{{ name }}` placeholders. Documents (JSON files, the agent's systemd unit)
go in as JSON string literals, which are valid YAML scalars whatever they contain; the few
values spliced into shell lines (region, image reference, parameter name) must be plain
tokens, checked here, so no value can change the meaning of a script.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "userdata"
AGENT_UNIT = ROOT / "campfleet" / "agent" / "campfleet-agent.service"
# Both roles boot the official Debian 12 (bookworm) AMI, its latest amd64 release: the same
# distribution, packages and cloud-init a rehearsal boots on a laptop (its python3 is 3.11,
# the stdlib-only agent's floor; its default login user is `admin`, and no SSH is opened).
AMI_PARAMETER = "/aws/service/debian/release/12/latest/amd64"
# EC2 rejects user data over 16 KB (before base64).
USER_DATA_LIMIT = 16 * 1024

_PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")
_TOKEN = re.compile(r"^[A-Za-z0-9._:/@+-]+$")


def _document(value: Any) -> str:
    """A file's content as one YAML scalar (a JSON string literal)."""
    text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True) + "\n"
    return json.dumps(text)


def _token(name: str, value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"user data: {name} {value!r} is not a plain token; refusing to render")
    return value


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill a template's placeholders; every placeholder needs a value and every value a use."""
    text = (TEMPLATES / template).read_text()
    used = set(_PLACEHOLDER.findall(text))
    if used != set(values):
        raise ValueError(
            f"user data {template}: placeholders {sorted(used)} but values {sorted(values)}"
        )
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _docker_config(image: str) -> str:
    """Docker signs in to the image's ECR registry with the instance role (credential helper)."""
    registry = image.split("/", 1)[0]
    return _document({"credHelpers": {registry: "ecr-login"}})


def mux_user_data(settings: Mapping[str, Any], mux_image: str, state_volume: str) -> str:
    """Cloud-config for the mux; `settings` is mux.json (parameter names, never values).

    `state_volume` (vol-...) is found by its NVMe serial, which is the id without the dash.
    """
    return render(
        "mux.yaml",
        {
            "mux_json": _document(dict(settings)),
            "docker_config": _docker_config(_token("mux image", mux_image)),
            "mux_image": mux_image,
            "state_serial": _token("state volume", state_volume).replace("-", ""),
        },
    )


def ship_user_data(
    agent: Mapping[str, Any], ship_image: str, region: str, secret_parameter: str
) -> str:
    """Cloud-config for every ship; `agent` is agent.json."""
    if not AGENT_UNIT.is_file():
        raise FileNotFoundError(f"user data: the agent's systemd unit {AGENT_UNIT} is missing")
    return render(
        "ship.yaml",
        {
            "agent_json": _document(dict(agent)),
            "agent_unit": _document(AGENT_UNIT.read_text()),
            "docker_config": _docker_config(_token("ship image", ship_image)),
            "ship_image": ship_image,
            "region": _token("region", region),
            "secret_parameter": _token("secret parameter", secret_parameter),
        },
    )


def pack(user_data: str) -> str:
    """gzip + base64, as EC2 takes it; deterministic (mtime 0) so unchanged text shows no diff."""
    packed = gzip.compress(user_data.encode(), compresslevel=9, mtime=0)
    if len(packed) > USER_DATA_LIMIT:
        raise ValueError(
            f"user data is {len(packed)} bytes compressed; EC2 allows {USER_DATA_LIMIT}"
        )
    return base64.b64encode(packed).decode()
