"""Fixtures shared by every test directory: the Docker engine, images and local registry
(defined once here, so the session-scoped ones are made once per run)."""

import pytest

from tests.docker_kit import docker_images, local_registry  # noqa: F401

# The first Docker test of a run also builds the stand-in bases and both images (3-4 minutes
# on a fresh machine, more on a slow one): more than pytest-timeout's 600 s default must fit.
DOCKER_TIMEOUT = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("docker") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(DOCKER_TIMEOUT))
