"""IAM helpers shared by the mux and the ships: an EC2 role + instance profile, and policies.

Each role gets one inline policy (a RolePolicy resource of its own, so the policy can name
resources created after the role without a dependency cycle).
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from campfleet.tags import STACK_TAG, tagged

EC2_TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)
# Pull one repository's images; the token call cannot be scoped (AWS: Resource must be "*").
ECR_PULL_ACTIONS = [
    "ecr:BatchCheckLayerAvailability",
    "ecr:BatchGetImage",
    "ecr:GetDownloadUrlForLayer",
]


def ecr_statements(repository_arn: pulumi.Input[str]) -> list[dict[str, Any]]:
    return [
        {
            "Sid": "EcrToken",
            "Effect": "Allow",
            "Action": "ecr:GetAuthorizationToken",  # AWS supports no resource scoping here
            "Resource": "*",
        },
        {
            "Sid": "EcrPull",
            "Effect": "Allow",
            "Action": ECR_PULL_ACTIONS,
            "Resource": repository_arn,
        },
    ]


def instance_role(
    name: str,
    parent: pulumi.Resource,
    statements: list[dict[str, Any]],
    tags: dict[str, str],
) -> tuple[aws.iam.InstanceProfile, aws.iam.RolePolicy]:
    """Role + its inline policy + instance profile, all children of `parent`, named `name-*`."""
    child = pulumi.ResourceOptions(parent=parent)
    prefix = f"campfleet-{tags[STACK_TAG]}-{name}"
    role = aws.iam.Role(
        f"{name}-role",
        assume_role_policy=EC2_TRUST,
        description=f"campfleet {name} instances",
        tags=tagged(tags, f"{prefix}-role"),
        opts=child,
    )
    policy = aws.iam.RolePolicy(
        f"{name}-policy",
        role=role.id,
        policy=pulumi.Output.from_input({"Version": "2012-10-17", "Statement": statements}).apply(
            lambda document: json.dumps(document, sort_keys=True)
        ),
        opts=child,
    )
    profile = aws.iam.InstanceProfile(
        f"{name}-profile", role=role.name, tags=tagged(tags, f"{prefix}-profile"), opts=child
    )
    return profile, policy
