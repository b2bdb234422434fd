"""The event's secrets by name: mux.json `parameters` keys, SSM parameter names, local files.

On AWS each secret is a SecureString parameter /campfleet/<stack>/<name> (components/
secrets.py makes them; the mux and the ships read them with their roles). A local event keeps
the same secrets as files secrets/<name> in its state directory. mux.json names which
parameter or file holds each one, never a value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Secret:
    key: str  # its key in mux.json's `parameters`
    name: str  # the last part of its SSM parameter name; its file name in a local event
    # Generated length in characters (components/secrets.py); None = 32 random bytes as hex.
    length: Optional[int] = None


FLEET_SECRET = Secret("fleetSecret", "fleet-secret", 48)
PROXY_TOKEN = Secret("proxyToken", "proxy-token")
# Hex: JupyterHub's cookie secret must be.
COOKIE_SECRET = Secret("cookieSecret", "cookie-secret")
SHARED_PASSWORD = Secret("sharedPassword", "shared-password", 12)  # attendees type it
ADMIN_PASSWORD = Secret("adminPassword", "admin-password", 40)  # JupyterHub: >= 32
API_TOKEN = Secret("apiToken", "api-token", 48)  # `campfleet status` / redeploy
# Every event has these; pulumi-random generates them (or the organizer gives the password).
GENERATED = (FLEET_SECRET, PROXY_TOKEN, COOKIE_SECRET, SHARED_PASSWORD, ADMIN_PASSWORD, API_TOKEN)
# The mux refuses settings whose `parameters` lack one of these.
REQUIRED = (FLEET_SECRET, PROXY_TOKEN, COOKIE_SECRET, SHARED_PASSWORD)
# auth: oauth only; given by the organizer, never generated.
OAUTH_CLIENT_SECRET = Secret("oauthClientSecret", "oauth-client-secret")
# auth: codes only; the hashes of the attendee codes, written by `campfleet attendees codes`
# (not a Pulumi resource, so new codes never fight `pulumi up`). Locally a JSON file.
ATTENDEE_CODES = Secret("attendeeCodes", "attendee-codes")
# What the mux fetches at start (the codes are read by the code authenticator instead).
MUX_SECRETS = (*GENERATED, OAUTH_CLIENT_SECRET)

LOCAL_SECRETS_DIR = "secrets"  # under a local event's state directory


def parameter_name(stack: str, secret: Secret) -> str:
    """The SSM parameter that holds `secret` for `stack`."""
    return f"/campfleet/{stack}/{secret.name}"


def codes_parameter(stack: str) -> str:
    """SSM parameter with the hashes of a stack's attendee codes."""
    return parameter_name(stack, ATTENDEE_CODES)


def local_file(secret: Secret) -> str:
    """A local event's file for `secret`, relative to its state directory."""
    suffix = ".json" if secret is ATTENDEE_CODES else ""
    return f"{LOCAL_SECRETS_DIR}/{secret.name}{suffix}"
