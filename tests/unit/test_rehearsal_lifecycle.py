"""The CompleteLifecycleAction responder the rehearsal adds to moto (5.2.5 has none), served by
moto's real server on 127.0.0.1 and called with boto3 as the agent's awscli calls it."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from campfleet.rehearsal import motoserver


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    motoserver.install_responders()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        yield endpoint
    finally:
        # moto's backends are per process, not per server: without a reset the group made
        # here is still there for a later test's LocalAws (which then met a group "ships"
        # it had not made, without its hooks).
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", b"", {}))
        server.stop()


def client(endpoint: str, service: str) -> Any:
    return boto3.client(
        service, region_name="eu-west-1", endpoint_url=endpoint,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip


def test_complete_lifecycle_action_is_checked_and_recorded(moto_endpoint: str) -> None:
    ec2, autoscaling = client(moto_endpoint, "ec2"), client(moto_endpoint, "autoscaling")
    ec2.create_launch_template(
        LaunchTemplateName="tpl", LaunchTemplateData={"ImageId": "ami-12c6146b"}
    )
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="ships", LaunchTemplate={"LaunchTemplateName": "tpl"},
        MinSize=0, MaxSize=5, DesiredCapacity=0, AvailabilityZones=["eu-west-1a"],
    )  # fmt: skip
    autoscaling.put_lifecycle_hook(
        LifecycleHookName="drain", AutoScalingGroupName="ships",
        LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
    )  # fmt: skip
    inside, outside = (
        ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0][
            "InstanceId"
        ]
        for _ in range(2)
    )
    autoscaling.attach_instances(AutoScalingGroupName="ships", InstanceIds=[inside])

    def complete(hook: str, instance: str, group: str = "ships") -> None:
        autoscaling.complete_lifecycle_action(
            LifecycleHookName=hook, AutoScalingGroupName=group,
            LifecycleActionResult="CONTINUE", InstanceId=instance,
        )  # fmt: skip

    for hook, instance, group in (
        ("nope", inside, "ships"),
        ("drain", outside, "ships"),
        ("drain", inside, "other-group"),
    ):
        with pytest.raises(ClientError, match="ValidationError"):
            complete(hook, instance, group)
    assert motoserver.completions(inside) == []
    complete("drain", inside)
    [done] = motoserver.completions(inside)
    assert done["hook"] == "drain" and done["result"] == "CONTINUE"
    assert done["transition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
