"""Session fixtures for the tests that run real containers: the engine, both images, a local
registry standing in for ECR. When the engine cannot start or an image cannot be built, the
tests that use them FAIL with the reason (they are not skipped: `make test` installs Docker).

Everything a test starts on the engine is labelled `campfleet.test=<session id>` (directly or
through the agent's --docker-scope) and removed at the end of the session, failures included.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from campfleet.agent.docker import SCOPE_LABEL
from campfleet.images import ImageError, ensure_images

SESSION = uuid.uuid4().hex[:8]
TEST_LABEL = f"campfleet.test={SESSION}"
SCOPE_PREFIX = f"t{SESSION}"  # every --docker-scope of this session starts with it


def docker(*args: str, timeout: float = 300, check: bool = True) -> str:
    done = subprocess.run(
        ["docker", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed: {done.stderr.strip()[-800:]}")
    return done.stdout.strip()


def remove_session_containers() -> int:
    """Remove every container this session made (its label, or an agent scope of it)."""
    rows = docker(
        "ps", "-a", "--filter", f"label={SCOPE_LABEL}",
        "--format", "{{.ID}} {{.Label \"" + SCOPE_LABEL + "\"}}",
    )  # fmt: skip
    ids = [row.split()[0] for row in rows.splitlines() if row.split()[-1].startswith(SCOPE_PREFIX)]
    ids += docker("ps", "-aq", "--filter", f"label={TEST_LABEL}").split()
    if ids:
        docker("rm", "-f", *ids, check=False)
    return len(ids)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def docker_images(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Engine up, stand-in bases and both images built: {"ship": id, "mux": id}."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        with capture.global_and_fixture_disabled():
            print(f"[docker] {line}", flush=True)

    say("making sure the Docker engine, the stand-in bases and both images exist")
    started = time.monotonic()
    try:
        images = ensure_images(progress=say)
    except ImageError as exc:
        pytest.fail(f"the Docker tests need a working engine and images: {exc}", pytrace=False)
    say(f"engine and images ready in {time.monotonic() - started:.0f} s")
    yield images
    left = remove_session_containers()
    if left:
        say(f"removed {left} container(s) left by tests")


@dataclass
class LocalRegistry:
    """Debian's docker-registry on 127.0.0.1, standing in for ECR."""

    host: str
    log: Path

    def push(self, image: str, repo: str, tag: str) -> str:
        """Push `image` as repo:tag; returns the pull-by-digest reference; the local tag and
        repo digest are dropped, so the agent really pulls it."""
        ref = f"{self.host}/{repo}:{tag}"
        docker("tag", image, ref)
        docker("push", ref)
        digests = docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
        digest = next(d for d in json.loads(digests) if d.startswith(self.host))
        # Untag (the image stays under its other names; its digest from this registry goes
        # with the tag), so that the agent's pull really asks the registry.
        docker("rmi", ref)
        return digest

    def served(self, digest: str) -> bool:
        """Did a client fetch this manifest from the registry?"""
        sha = digest.rpartition("@")[2]
        return f"/manifests/{sha}" in self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def local_registry(
    docker_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalRegistry]:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry is not installed (scripts/system-deps.sh installs it)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    log = root / "registry.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=out, stderr=out, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"docker-registry did not start: {log.read_text()[-500:]}")
                time.sleep(0.1)
        yield LocalRegistry(f"127.0.0.1:{port}", log)
    finally:
        proc.terminate()
        proc.wait(10)
        # The references the agents pulled from it (a later run's registry has another port);
        # by reference, not id: the same image is also campfleet-ship:local.
        pulled = docker(
            "images", "--digests", "--format", "{{.Repository}}@{{.Digest}}",
            "--filter", f"reference=127.0.0.1:{port}/*", check=False,
        ).split()  # fmt: skip
        if pulled:
            docker("rmi", *set(pulled), check=False)


def derived_image(base: str, tag: str, files: dict[str, str], tmp: Path) -> str:
    """A new image on `base` with extra files (a "fixed" tutorial image for redeploys)."""
    ctx = tmp / f"ctx-{uuid.uuid4().hex[:6]}"
    ctx.mkdir()
    lines = [f"FROM {base}"]
    for i, (path, text) in enumerate(files.items()):
        (ctx / f"f{i}").write_text(text)
        lines.append(f"COPY f{i} {path}")
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    docker("build", "--quiet", "--force-rm", "--label", TEST_LABEL, "-t", tag, str(ctx))
    return tag
