"""A container image built from images/<name>/ and pushed to this stack's ECR repository.

Consumers get the repository digest (`repo@sha256:...`), an immutable reference, so a
launch template or the mux settings change exactly when the image content changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_docker as docker

from campfleet.tags import tagged

# Every build is pushed as `latest` and consumed by digest, so each earlier build becomes an
# untagged image that launch templates, ships and the mux may still name by digest (a
# replacement ship, a rollback). Keep the 10 most recent of them; expire older ones.
KEPT_PREVIOUS_IMAGES = 10
LIFECYCLE_POLICY = json.dumps(
    {
        "rules": [
            {
                "rulePriority": 1,
                "description": f"keep the {KEPT_PREVIOUS_IMAGES} most recent earlier builds",
                "selection": {
                    "tagStatus": "untagged",
                    "countType": "imageCountMoreThan",
                    "countNumber": KEPT_PREVIOUS_IMAGES,
                },
                "action": {"type": "expire"},
            },
        ]
    },
    sort_keys=True,
)


@dataclass(frozen=True)
class ContainerImageArgs:
    repository_name: str  # ECR name: lower-case, unique per stack
    context: str  # build context, relative to the project root (where Pulumi runs)
    dockerfile: str
    tags: dict[str, str]
    platform: str = "linux/amd64"  # the AMIs are x86_64


class ContainerImage(pulumi.ComponentResource):
    """ECR repository (scan on push, lifecycle policy) + the image built and pushed to it."""

    repository_arn: pulumi.Output[str]
    repository_url: pulumi.Output[str]
    repo_digest: pulumi.Output[str]

    def __init__(
        self, name: str, args: ContainerImageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("campfleet:index:ContainerImage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        repo = aws.ecr.Repository(
            f"{name}-repo",
            name=args.repository_name,
            image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(
                scan_on_push=True
            ),
            image_tag_mutability="MUTABLE",  # `latest` is re-pushed; consumers use the digest
            encryption_configurations=[
                aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="AES256")
            ],
            force_delete=True,  # `pulumi destroy` after the event removes the images too
            tags=tagged(args.tags, args.repository_name),
            opts=child,
        )
        aws.ecr.LifecyclePolicy(
            f"{name}-lifecycle", repository=repo.name, policy=LIFECYCLE_POLICY, opts=child
        )
        token = aws.ecr.get_authorization_token_output(
            registry_id=repo.registry_id, opts=pulumi.InvokeOutputOptions(parent=self)
        )
        image = docker.Image(
            f"{name}-image",
            image_name=repo.repository_url.apply(lambda url: f"{url}:latest"),
            build=docker.DockerBuildArgs(
                context=args.context, dockerfile=args.dockerfile, platform=args.platform
            ),
            registry=docker.RegistryArgs(
                server=repo.repository_url,
                username=token.user_name,
                password=pulumi.Output.secret(token.password),
            ),
            opts=child,
        )
        self.repository_arn = repo.arn
        self.repository_url = repo.repository_url
        self.repo_digest = image.repo_digest
        self.register_outputs(
            {
                "repositoryArn": repo.arn,
                "repositoryUrl": repo.repository_url,
                "repoDigest": image.repo_digest,
            }
        )
