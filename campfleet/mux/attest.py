"""Ship attestation: which EC2 instance is asking, before it gets a key of its own.

A ship asks for a single-use nonce (POST /v1/attest/challenge), then sends IMDS's instance
identity document and its RSA-2048 signature with that nonce (POST /v1/attest). `Attestor.check`
accepts it only if:

1. the nonce was issued to this ship id and this peer address, within NONCE_TTL, and is unused
   (it is spent by the first try, good or bad: a captured attestation cannot be sent again);
2. the signature verifies against the trusted certificate of the document's Region (AWS's
   published ones; a test authority's locally) and the document is this ship id's;
3. the document's Region is the fleet's, and its private address is the connection's source
   (a copied document is useless from any other machine);
4. the cloud says the instance is pending or running, was launched by the stack's Auto Scaling
   group (the `aws:autoscaling:groupName` tag, which only AWS can set), and has that private
   address.

The caller (the control server) then applies the first-attestation-wins rule per run of the
instance (`registry.attest_refusal`) and issues the key. Lookups arriving together (a storm of
ships booting) go to the cloud in one batched call.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from typing import Awaitable, Callable, Iterable, Optional

from campfleet import identity
from campfleet.mux.cloud import CloudError, InstanceFacts
from campfleet.protocol import FORGED, MALFORMED, REPLAY, UNTRUSTED, valid_ship_id

log = logging.getLogger(__name__)

NONCE_TTL = 60.0  # seconds a challenge may be answered in
MAX_NONCES = 65536  # outstanding challenges kept (oldest forgotten first)
LOOKUP_DELAY = 0.05  # seconds lookups are gathered for one cloud call
LIVE_STATES = ("pending", "running")

Lookup = Callable[[list], Awaitable["dict[str, InstanceFacts]"]]


class AttestRefused(Exception):
    """An attestation is refused: `kind` (a protocol rejection kind) and a one-line reason."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


class Attestor:
    """Checks attestations against trusted certificates and the cloud's view of the group."""

    def __init__(
        self,
        trusted: identity.Trusted,
        lookup: Lookup,
        group_name: str,
        region: str = "",
        nonce_ttl: float = NONCE_TTL,
    ) -> None:
        self.trusted = trusted
        self.lookup = lookup
        self.group_name = group_name
        self.region = region
        self.nonce_ttl = nonce_ttl
        self._nonces: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self._waiting: dict[str, list[asyncio.Future]] = {}
        self._flush: Optional[asyncio.TimerHandle] = None
        self._tasks: set[asyncio.Task] = set()

    def challenge(self, ship_id: str, peer: str) -> str:
        """A fresh nonce for `ship_id` asking from `peer`."""
        now = time.monotonic()
        while self._nonces:  # drop expired ones (they are in issue order)
            oldest = next(iter(self._nonces.values()))
            if oldest[2] > now and len(self._nonces) < MAX_NONCES:
                break
            self._nonces.popitem(last=False)
        nonce = secrets.token_hex(16)
        self._nonces[nonce] = (ship_id, peer, now + self.nonce_ttl)
        return nonce

    def spend(self, nonce: str, ship_id: str, peer: str) -> None:
        """Use up a nonce; raise unless it was issued to this ship and peer and is fresh."""
        issued = self._nonces.pop(nonce, None)
        if issued is None:
            raise AttestRefused(
                REPLAY, "attestation nonce is unknown or already used: ask for a new challenge"
            )
        if issued[:2] != (ship_id, peer):
            raise AttestRefused(
                REPLAY, f"attestation nonce was issued to {issued[0]} at {issued[1]}, not to "
                f"{ship_id} at {peer}"
            )  # fmt: skip
        if issued[2] < time.monotonic():
            raise AttestRefused(REPLAY, f"attestation nonce expired ({self.nonce_ttl:g} s)")

    async def check(self, request: object, peer: str) -> identity.IdentityDocument:
        """The verified identity of an attestation request body (parsed JSON), or raise."""
        if not isinstance(request, dict):
            raise AttestRefused(MALFORMED, "body: expected a JSON object")
        fields = {}
        for name in ("ship_id", "nonce", "document", "rsa2048", "public"):
            value = request.get(name)
            if not isinstance(value, str) or not value:
                raise AttestRefused(MALFORMED, f"{name}: missing or not a string")
            fields[name] = value
        ship_id = fields["ship_id"]
        if not valid_ship_id(ship_id):
            raise AttestRefused(MALFORMED, "ship_id is not an EC2 instance id")
        self.spend(fields["nonce"], ship_id, peer)
        try:
            doc = identity.verify(fields["rsa2048"], self.trusted, fields["document"].encode())
        except identity.IdentityRefused as exc:
            raise AttestRefused(FORGED, str(exc)) from None
        if doc.instance_id != ship_id:
            raise AttestRefused(
                UNTRUSTED, f"identity document is {doc.instance_id[:32]!r}'s, not {ship_id}'s"
            )
        if self.region and doc.region != self.region:
            raise AttestRefused(
                UNTRUSTED,
                f"identity document is from region {doc.region[:32]!r}; this fleet is in "
                f"{self.region}",
            )
        if doc.private_ip != peer:
            raise AttestRefused(
                UNTRUSTED,
                f"identity document's private address {doc.private_ip[:40]} is not the "
                f"connection's {peer}",
            )
        facts = await self._facts(ship_id)
        if facts is None:
            raise AttestRefused(UNTRUSTED, f"instance {ship_id} is unknown to the cloud")
        if facts.group != self.group_name:
            where = f"group {facts.group!r}" if facts.group else "no Auto Scaling group"
            raise AttestRefused(
                UNTRUSTED,
                f"instance {ship_id} is in {where}, not the fleet's {self.group_name!r}",
            )
        if facts.state not in LIVE_STATES:
            raise AttestRefused(UNTRUSTED, f"instance {ship_id} is {facts.state or 'gone'}")
        if facts.private_ip != doc.private_ip:
            raise AttestRefused(
                UNTRUSTED,
                f"instance {ship_id}'s private address is {facts.private_ip or 'none'}, the "
                f"identity document says {doc.private_ip}",
            )
        return doc

    # -- batched cloud lookups ------------------------------------------------------------------

    async def _facts(self, instance_id: str) -> Optional[InstanceFacts]:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(instance_id, []).append(fut)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(LOOKUP_DELAY, self._start_flush)
        return await fut

    def _start_flush(self) -> None:
        self._flush = None
        waiting, self._waiting = self._waiting, {}
        task = asyncio.ensure_future(self._lookup(waiting))
        self._tasks.add(task)  # a reference, so the task is not collected mid-way
        task.add_done_callback(self._tasks.discard)

    async def _lookup(self, waiting: dict[str, list[asyncio.Future]]) -> None:
        try:
            found = await self.lookup(sorted(waiting))
        except Exception as exc:  # CloudError, or anything: never leave an attestation hanging
            if not isinstance(exc, CloudError):
                log.exception("attestation lookup of %d instances failed", len(waiting))
            log.warning("attestation lookup of %d instances failed: %s", len(waiting), exc)
            error = AttestRefused(UNTRUSTED, f"the cloud could not be asked ({exc}); retry")
            for futures in waiting.values():
                for fut in futures:
                    if not fut.done():
                        fut.set_exception(error)
            return
        for instance_id, futures in waiting.items():
            for fut in futures:
                if not fut.done():
                    fut.set_result(found.get(instance_id))


class KnownInstances:
    """Instances known up front, standing in for DescribeInstances where there is no EC2
    (tests, benchmarks): `add` a ship before it attests. Pass it as an Attestor's lookup."""

    def __init__(self, group: str = "") -> None:
        self.group = group
        self.facts: dict[str, InstanceFacts] = {}

    def add(
        self, instance_ids: Iterable[str], private_ip: str = "127.0.0.1", state: str = "running"
    ) -> None:
        for instance_id in instance_ids:
            self.facts[instance_id] = InstanceFacts(instance_id, state, self.group, private_ip)

    async def __call__(self, instance_ids: list) -> dict[str, InstanceFacts]:
        return {i: self.facts[i] for i in instance_ids if i in self.facts}


def local_attestor(
    trusted: identity.Trusted, instances: KnownInstances, region: str = "local"
) -> Attestor:
    """An Attestor for loopback fleets: a test authority's certificate, known instances."""
    return Attestor(trusted, instances, group_name=instances.group, region=region)
