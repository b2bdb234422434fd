"""Run the Pulumi program in-process under mocks: no Pulumi CLI, no plugins, no cloud.

Tests, `campfleet plan`, the policy checks and the scaling benchmark all need the resource
graph a stack config implies. This runs `__main__.py` the way the Python language host does
(config set with `set_all_config`, the program inside `run_in_stack`, every registration
awaited) against a recording mock monitor, in a fresh context each time so it can be called
repeatedly in one process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import hashlib
import json
import logging
import runpy
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

# The program's components live next to this package in the project root (Pulumi.yaml's
# directory); console scripts do not have that root on sys.path, so add it once.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.append(str(PROJECT_ROOT))

from components.config import (  # noqa: E402
    ConfigError,
    FleetConfig,
    parse_config,
    read_stack_config,
)

__all__ = ["ConfigError", "Evaluation", "Resource", "evaluate"]

ACCOUNT = "123456789012"
DEFAULT_REGION = "us-east-1"
_LOG = logging.getLogger("campfleet.evaluate")


@dataclass(frozen=True)
class Resource:
    """One registered resource as a policy pack sees it.

    Inputs have camelCase keys, secrets unwrapped (named in `secret_inputs`), and integral
    numbers as ints (protobuf sends every number as a double).
    """

    type: str
    name: str
    urn: str
    inputs: dict[str, Any]
    parent: Optional[str]
    protect: bool
    outputs: dict[str, Any]
    custom: bool = True
    # Top-level input keys whose value is (or contains) a Pulumi secret.
    secret_inputs: frozenset[str] = field(default_factory=frozenset)
    # Property paths Pulumi leaves as they are on an existing resource (ignoreChanges).
    ignore_changes: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Evaluation:
    """The resource graph and stack outputs of one program run."""

    config: FleetConfig
    resources: list[Resource]
    outputs: dict[str, Any]

    def counts(self) -> dict[str, int]:
        """Resources per type token (components included, the stack itself not)."""
        return dict(Counter(r.type for r in self.resources))

    def of_type(self, type_token: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_token]

    def one(self, type_token: str) -> Resource:
        """The single resource of a type; fails loudly if there is not exactly one."""
        found = self.of_type(type_token)
        if len(found) != 1:
            raise LookupError(f"expected one {type_token}, found {len(found)}")
        return found[0]


def _unwrap(value: Any) -> tuple[Any, bool]:
    """Plain value of an RPC-deserialized property, and whether any part of it was secret."""
    from pulumi.runtime import rpc

    if rpc.is_rpc_secret(value):
        return _unwrap(rpc.unwrap_rpc_secret(value))[0], True
    if isinstance(value, dict):
        pairs = {k: _unwrap(v) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(s for _, s in pairs.values())
    if isinstance(value, list):
        items = [_unwrap(v) for v in value]
        return [v for v, _ in items], any(s for _, s in items)
    if isinstance(value, float) and value.is_integer():
        return int(value), False  # protobuf carries every number as a double
    return value, False


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def _encode(value: Any) -> tuple[str, bool]:
    """A stack-file value as the CLI passes it: a string (JSON for lists), and a secret flag."""
    if isinstance(value, dict) and set(value) == {"secure"}:
        return str(value["secure"]), True
    if isinstance(value, str):
        return value, False
    return json.dumps(value), False


def _mocks_class():
    import pulumi

    class FleetMocks(pulumi.runtime.Mocks):
        """Plausible AWS answers so every Output in the program resolves."""

        def __init__(self, region: str, digests: Mapping[str, str], ids: Mapping[str, str]) -> None:
            self.region = region
            # Resource name -> physical id, as a local AWS made it (the rehearsal's volumes).
            self.ids = dict(ids)
            # Image name (no tag) -> sha256 digest, as the registry answered a push (the
            # rehearsal's local ECR); other images get a made-up digest.
            self.digests = dict(digests)

        def _arn(self, service: str, resource: str) -> str:
            return f"arn:aws:{service}:{self.region}:{ACCOUNT}:{resource}"

        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
            inputs = dict(args.inputs)  # already plain: RecordingMonitor unwraps secrets
            typ, name = args.typ, args.name
            if not args.custom:
                return "", {}
            h = _digest(typ, name)
            out: dict[str, Any] = {**inputs}
            rid = f"{name}-{h[:8]}"
            module = typ.split(":")[1].split("/")[0] if typ.count(":") == 2 else ""
            if typ.startswith("aws:ec2/"):
                prefix = {
                    "aws:ec2/vpc:Vpc": "vpc",
                    "aws:ec2/subnet:Subnet": "subnet",
                    "aws:ec2/securityGroup:SecurityGroup": "sg",
                    "aws:ec2/instance:Instance": "i",
                    "aws:ec2/eip:Eip": "eipalloc",
                    "aws:ec2/launchTemplate:LaunchTemplate": "lt",
                    "aws:ec2/internetGateway:InternetGateway": "igw",
                    "aws:ec2/natGateway:NatGateway": "nat",
                    "aws:ec2/routeTable:RouteTable": "rtb",
                    "aws:ec2/vpcEndpoint:VpcEndpoint": "vpce",
                }.get(typ, "r")
                rid = f"{prefix}-{h[:17]}"
                out["arn"] = self._arn("ec2", f"{typ.split(':')[-1].lower()}/{rid}")
            if typ == "aws:ebs/volume:Volume":
                rid = f"vol-{h[:17]}"
                out["arn"] = self._arn("ec2", f"volume/{rid}")
            elif typ == "aws:ec2/instance:Instance":
                out.update(privateIp="10.0.0.10", publicIp="", primaryNetworkInterfaceId="eni-1")
            elif typ == "aws:ec2/eip:Eip":
                out.update(publicIp="203.0.113.10", allocationId=rid)
            elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
                out.update(latestVersion=1, defaultVersion=1)
            elif typ == "aws:ecr/repository:Repository":
                repo = inputs.get("name", name)
                out.update(
                    repositoryUrl=f"{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com/{repo}",
                    registryId=ACCOUNT,
                    arn=self._arn("ecr", f"repository/{repo}"),
                )
            elif typ == "docker:index/image:Image":
                image = str(inputs.get("imageName", name)).rsplit(":", 1)[0]
                digest = self.digests.get(image, f"sha256:{h}")
                out.update(repoDigest=f"{image}@{digest}", baseImageName=image)
            elif typ.startswith("random:"):
                length = int(inputs.get("length", 32))
                out.update(result=h[:length], hex=h[:64], b64Std=h[:44], bcryptHash="$2a$mock")
            elif typ == "aws:ssm/parameter:Parameter":
                out["arn"] = self._arn("ssm", f"parameter{inputs.get('name', '/' + name)}")
                rid = inputs.get("name", name)
            elif typ == "aws:autoscaling/group:Group":
                group = inputs.get("name", name)
                rid = group
                out["arn"] = self._arn(
                    "autoscaling", f"autoScalingGroup:{h[:8]}:autoScalingGroupName/{group}"
                )
            elif module == "iam":
                out.setdefault("name", name)
                out["arn"] = f"arn:aws:iam::{ACCOUNT}:{typ.split(':')[-1].lower()}/{out['name']}"
                out["uniqueId"] = f"AROA{h[:16].upper()}"
                rid = out["name"]
            rid = self.ids.get(name, rid)
            out.setdefault("arn", self._arn(module or "mock", f"{name}"))
            out.setdefault("id", rid)
            return rid, out

        def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
            token = args.token
            if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
                names = [f"{self.region}{s}" for s in "abcdef"]
                return {"names": names, "zoneIds": [f"use1-az{i}" for i in range(1, 7)]}
            if token == "aws:index/getRegion:getRegion":
                return {
                    "name": self.region,
                    "region": self.region,
                    "id": self.region,
                    "description": f"mock {self.region}",
                    "endpoint": f"ec2.{self.region}.amazonaws.com",
                }
            if token == "aws:ssm/getParameter:getParameter":
                name = args.args["name"]
                return {"name": name, "value": f"ami-{_digest(name)[:17]}", "type": "String"}
            if token == "aws:index/getCallerIdentity:getCallerIdentity":
                arn = f"arn:aws:iam::{ACCOUNT}:user/campfleet-mock"
                return {"accountId": ACCOUNT, "arn": arn, "userId": "AIDAMOCK", "id": ACCOUNT}
            if token == "aws:index/getPartition:getPartition":
                return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}
            if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
                endpoint = f"https://{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com"
                return {
                    "userName": "AWS",
                    "password": "mock-token",
                    "proxyEndpoint": endpoint,
                    "authorizationToken": "QVdTOm1vY2s=",
                    "id": self.region,
                }
            raise NotImplementedError(f"evaluate: no mock answer for invoke {token}")

    return FleetMocks


def _monitor_class():
    from google.protobuf import struct_pb2
    from pulumi.runtime import rpc
    from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs
    from pulumi.runtime.proto import resource_pb2

    def struct(values: dict) -> struct_pb2.Struct:
        message = struct_pb2.Struct()
        message.update(values)
        return message

    class RecordingMonitor(MockMonitor):
        """Records what a policy pack would see (parent, protect, inputs, registered outputs).

        Answers synchronously with plain protobuf (no nested event-loop pumping), so the
        registrations can run inline on the event loop instead of hopping to worker threads.
        """

        def __init__(self, mocks: Any) -> None:
            super().__init__(mocks)
            self.recorded: list[Resource] = []
            self.registered_outputs: dict[str, Any] = {}

        def RegisterResource(self, request: Any) -> Any:
            urn = self.make_urn(request.parent, request.type, request.name)
            if request.type == "pulumi:pulumi:Stack":
                return resource_pb2.RegisterResourceResponse(urn=urn)
            pairs = {k: _unwrap(v) for k, v in rpc.deserialize_properties(request.object).items()}
            inputs = {k: v for k, (v, _) in pairs.items()}
            args = MockResourceArgs(
                typ=request.type,
                name=request.name,
                inputs=inputs,
                provider=request.provider,
                resource_id=request.importId,
                custom=request.custom,
            )
            id_, state = self.mocks.new_resource(args)
            self.resources[urn] = MockMonitor.ResourceRegistration(urn, id_, state)
            self.recorded.append(
                Resource(
                    type=request.type,
                    name=request.name,
                    urn=urn,
                    inputs=inputs,
                    parent=request.parent or None,
                    protect=bool(request.protect),
                    outputs=state,
                    custom=bool(request.custom),
                    secret_inputs=frozenset(k for k, (_, secret) in pairs.items() if secret),
                    ignore_changes=frozenset(request.ignoreChanges),
                )
            )
            return resource_pb2.RegisterResourceResponse(urn=urn, id=id_, object=struct(state))

        def Invoke(self, request: Any) -> Any:
            args = _unwrap(rpc.deserialize_properties(request.args))[0]
            answer = self.mocks.call(MockCallArgs(request.tok, args, request.provider))
            return resource_pb2.ResourceInvokeResponse(failures=None, **{"return": struct(answer)})

        def RegisterResourceOutputs(self, request: Any) -> Any:
            outputs = rpc.deserialize_properties(request.outputs)
            self.registered_outputs[request.urn] = _unwrap(outputs)[0]
            return super().RegisterResourceOutputs(request)

    return RecordingMonitor


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each (mock, in-memory) monitor call at once on the loop's thread.

    The SDK sends every registration through the loop's default executor because a real
    monitor is a blocking gRPC call; the mock answers in microseconds, and the thread hops
    cost more than the answer (they dominated the per-resource time).
    """

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the awaiting coroutine, as a thread would
            future.set_exception(exc)
        return future


def _run(
    project_dir: Path,
    stack: str,
    values: Mapping[str, Any],
    config: FleetConfig,
    digests: Mapping[str, str],
    ids: Mapping[str, str],
) -> Evaluation:
    from pulumi.runtime import mocks, settings
    from pulumi.runtime.config import set_all_config
    from pulumi.runtime.stack import run_in_stack

    region = values.get("aws:region") or DEFAULT_REGION
    monitor = _monitor_class()(_mocks_class()(str(region), digests, ids))
    features = set(monitor.GetDeploymentInfo(None).supportedFeatures)
    settings.ROOT.set(None)
    settings.configure(
        mocks.MockSettings(
            monitor=monitor,
            monitor_features=features,
            engine=mocks.MockEngine(_LOG),
            project="campfleet",
            stack=stack,
            dry_run=False,
            organization="organization",
            callbacks=None,
        )
    )
    encoded = {
        key if ":" in key else f"campfleet:{key}": _encode(value) for key, value in values.items()
    }
    set_all_config(
        {key: text for key, (text, _) in encoded.items()},
        [key for key, (_, secret) in encoded.items() if secret],
    )
    main = project_dir / "__main__.py"

    def program() -> None:
        runpy.run_path(str(main), run_name="__main__")

    loop = asyncio.new_event_loop()
    loop.set_default_executor(_InlineExecutor(max_workers=1))
    # The SDK allocates ~100 short-lived objects per resource; cyclic GC passes over them
    # took over half the run at 1000 ships. Nothing here needs collecting until the end.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        loop.run_until_complete(run_in_stack(program))
    finally:
        if gc_was_enabled:
            gc.enable()
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    stack_urn = monitor.make_urn("", "pulumi:pulumi:Stack", f"campfleet-{stack}")
    outputs = monitor.registered_outputs.get(stack_urn)
    if outputs is None:
        raise RuntimeError(f"evaluate: {main} registered no stack outputs")
    components = monitor.registered_outputs
    resources = [
        r if r.custom else replace(r, outputs=components.get(r.urn, {})) for r in monitor.recorded
    ]
    return Evaluation(config=config, resources=resources, outputs=outputs)


def evaluate(
    project_dir: Path,
    stack: str,
    values: Optional[Mapping[str, Any]] = None,
    digests: Optional[Mapping[str, str]] = None,
    ids: Optional[Mapping[str, str]] = None,
) -> Evaluation:
    """Evaluate the program for `stack` (values default to Pulumi.<stack>.yaml's `config:`).

    `digests` (image name without tag -> "sha256:...") makes the built images' digests the
    ones a registry gave them (`campfleet rehearse` pushes them first); others are made up.
    `ids` (resource name -> physical id) does the same for resources a local AWS made.

    Raises ConfigError (every problem, one line each) before anything runs.
    """
    project_dir = Path(project_dir).resolve()
    if values is None:
        values = read_stack_config(project_dir, stack)
    config = parse_config(stack, values)
    return contextvars.copy_context().run(
        _run, project_dir, stack, values, config, digests or {}, ids or {}
    )
