"""Docker runtime: the `docker` CLI, so the agent stays stdlib-only.

Containers use host networking (the container listens on spec.port, like the local runtime, so
one health check serves both) and get the attendee's volume at `mount_path`. The environment
(it holds the hub API token) goes through an --env-file readable by root only and deleted right
after `docker run`, never on argv where `ps` shows it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional

from campfleet.agent.runtime import Runtime, RuntimeFailure
from campfleet.protocol import ContainerSpec

CONTENT_PATH = "/srv/campfleet/content"  # where a ship image keeps its tutorial content
LABEL = "campfleet.container"


class DockerRuntime(Runtime):
    needs_pull = True

    def __init__(self, state_dir: Path, mount_path: str = "/home/jovyan", docker: str = "docker"):
        self.state_dir = state_dir
        self.mount_path = mount_path
        self.docker = docker

    def _run(self, *args: str, timeout: float = 600) -> str:
        try:
            done = subprocess.run(
                [self.docker, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except FileNotFoundError as exc:
            raise RuntimeFailure(f"{self.docker!r} not found: install Docker on the ship") from exc
        except subprocess.TimeoutExpired as exc:
            raise RuntimeFailure(f"docker {args[0]} did not finish within {timeout:g} s") from exc
        if done.returncode != 0:
            err = " | ".join(done.stderr.strip().splitlines()[-5:])
            raise RuntimeFailure(f"docker {args[0]} failed ({done.returncode}): {err}")
        return done.stdout.strip()

    @staticmethod
    def cname(name: str) -> str:
        return f"campfleet-{name or 'default'}"

    def check(self) -> None:
        self._run("info", "--format", "{{.ServerVersion}}", timeout=30)

    def cleanup(self) -> None:
        ids = self._run("ps", "-aq", "--filter", f"label={LABEL}").split()
        if ids:
            self._run("rm", "-f", *ids)

    def pull(self, image: str) -> None:
        self._run("pull", "--quiet", image)

    def digest(self, spec: ContainerSpec) -> str:
        out = self._run(
            "image", "inspect", "--format", '{{join .RepoDigests " "}}|{{.Id}}', spec.image
        )
        repo_digests, _, image_id = out.partition("|")
        first = repo_digests.split()[0] if repo_digests.split() else ""
        return first.partition("@")[2] or image_id

    def content(self, image: str, scratch: Path) -> Optional[Path]:
        """Copy the image's content out once per image (cached under scratch), not per start."""
        target = scratch / hashlib.sha256(image.encode()).hexdigest()[:16]
        if (target / ".complete").exists():
            return target / "files"
        if (target / ".none").exists():
            return None
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        cid = self._run("create", image, "true")  # never started; a command keeps create happy
        try:
            self._run("cp", f"{cid}:{CONTENT_PATH}/.", str(target / "files"))
        except RuntimeFailure as exc:
            if "No such container:path" not in str(exc) and "Could not find" not in str(exc):
                raise
            (target / ".none").touch()  # this image ships no tutorial content
            return None
        finally:
            self._run("rm", "-f", cid)
        (target / ".complete").touch()
        return target / "files"

    def run_args(self, spec: ContainerSpec, workdir: Path, env_file: str) -> List[str]:
        """The `docker run` arguments (no secrets: the env is in env_file)."""
        return [
            "run",
            "--detach",
            "--name",
            self.cname(spec.name),
            "--label",
            f"{LABEL}={spec.name}",
            "--network",
            "host",
            "--restart",
            "no",
            "--env-file",
            env_file,
            "--volume",
            f"{workdir}:{self.mount_path}",
            spec.image,
            *spec.cmd,
        ]

    def start(self, spec: ContainerSpec, workdir: Path) -> None:
        for key, value in spec.env.items():
            if "\n" in value or "\n" in key or "=" in key or not key:
                raise RuntimeFailure(
                    f"env {key!r}: docker --env-file needs a non-empty name without '=' or "
                    "newlines, and a value without newlines"
                )
        self._run("rm", "-f", self.cname(spec.name))
        fd, env_file = tempfile.mkstemp(prefix="env-", dir=str(self.state_dir))  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.writelines(f"{k}={v}\n" for k, v in spec.env.items())
            self._run(*self.run_args(spec, workdir, env_file))
        finally:
            os.unlink(env_file)

    def exited(self, name: str) -> Optional[str]:
        try:
            out = self._run(
                "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", self.cname(name)
            )
        except RuntimeFailure as exc:
            return str(exc)
        running, _, code = out.partition(" ")
        if running == "true":
            return None
        try:
            logs = subprocess.run(
                [self.docker, "logs", "--tail", "20", self.cname(name)],
                capture_output=True,
                text=True,
                timeout=30,
            ).stderr
        except (OSError, subprocess.TimeoutExpired):
            logs = ""
        return f"exited with code {code}: {' | '.join(logs.strip().splitlines())[-2000:]}"

    def stop(self, name: str, timeout: float = 10.0) -> None:
        self._run("stop", "--time", str(int(timeout)), self.cname(name), timeout=timeout + 30)
        self._run("rm", "-f", self.cname(name))
