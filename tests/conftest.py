"""Fixtures shared by every test directory: the Docker engine, images and local registry
(defined once here, so the session-scoped ones are made once per run)."""

from tests.docker_kit import docker_images, local_registry  # noqa: F401
