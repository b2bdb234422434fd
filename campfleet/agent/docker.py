"""Docker runtime: the `docker` CLI, so the agent stays stdlib-only.

Containers use host networking (the container listens on spec.port, like the local runtime, so
one health check serves both) and get the attendee's volume at `mount_path`, owned by the
image's notebook user (uid 1000, gid 100; the ship base contract in images/ship/Dockerfile).
They run as that user with no capabilities and no privilege gain, within the memory (no swap)
and process limits of agent.json (campfleet.limits), and get nothing of the host
but that volume: not the Docker socket, the fleet secret or the agent's state. The environment
(it holds the hub API token) goes through an --env-file readable by root only and deleted right
after `docker run`, never on argv where `ps` shows it.

On AWS one agent owns the engine. `scope` lets several agents share one (`campfleet local
--runtime docker`): each names and labels its containers with it and cleans up only its own.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

from campfleet.agent.runtime import NOTEBOOK_USER, Runtime, RuntimeFailure
from campfleet.protocol import ContainerSpec

CONTENT_PATH = "/srv/campfleet/content"  # where a ship image keeps its tutorial content
LABEL = "campfleet.container"
SCOPE_LABEL = "campfleet.scope"


def immutable(image: str) -> bool:
    """A reference that names content (repo@sha256:..., or an image id): pulled once, ever."""
    return "@sha256:" in image or image.startswith("sha256:")


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP to the Docker engine's unix socket (the stdlib has no such connection)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _engine_socket() -> str:
    """The engine's unix socket as the docker CLI would find it ("" for a TCP engine)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return host[len("unix://") :] if host.startswith("unix://") else ""


class DockerRuntime(Runtime):
    needs_pull = True

    def __init__(
        self,
        state_dir: Path,
        mount_path: str = "/home/jovyan",
        docker: str = "docker",
        scope: str = "",
        memory_mib: int = 0,
        pids_limit: int = 0,
    ):
        self.state_dir = state_dir
        self.memory_mib = memory_mib
        self.pids_limit = pids_limit
        self.mount_path = mount_path
        self.docker = docker
        self.scope = scope
        self.socket = _engine_socket()

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

    def cname(self, name: str) -> str:
        scope = f"{self.scope}-" if self.scope else ""
        return f"campfleet-{scope}{name or 'default'}"

    @property
    def owned(self) -> str:
        """The `docker ps --filter` that selects this agent's containers."""
        return f"label={SCOPE_LABEL}={self.scope}" if self.scope else f"label={LABEL}"

    def check(self) -> None:
        self._run("info", "--format", "{{.ServerVersion}}", timeout=30)

    def cleanup(self) -> None:
        """At boot: containers of an earlier agent process (crashed, or restarted) go, so a
        start never meets a duplicate name and nothing runs that this agent does not track."""
        ids = self._run("ps", "-aq", "--filter", self.owned).split()
        if ids:
            self._run("rm", "-f", *ids)

    def pull(self, image: str) -> None:
        if immutable(image):
            try:
                self._run("image", "inspect", "--format", "{{.Id}}", image, timeout=30)
                return  # the same digest is already here: nothing newer can exist
            except RuntimeFailure:
                pass
        self._run("pull", "--quiet", image)

    def prepare(self, workdir: Path) -> None:
        """The volume belongs to the container's user (when the agent may give it away)."""
        if os.geteuid() == 0:
            os.chown(workdir, *NOTEBOOK_USER)

    def digest(self, spec: ContainerSpec) -> str:
        if "@" in spec.image:  # pulled by digest: that one, whatever else the image is called
            return spec.image.rpartition("@")[2]
        # JSON, not `join`: newer CLIs hand templates untyped lists that `join` refuses.
        out = self._run("image", "inspect", "--format", "{{.Id}}|{{json .RepoDigests}}", spec.image)
        image_id, _, repo_digests = out.partition("|")
        try:
            digests = [d for d in json.loads(repo_digests or "[]") or [] if "@" in d]
        except ValueError:
            digests = []
        return digests[0].partition("@")[2] if digests else image_id

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

    def limit_args(self) -> List[str]:
        """Memory without swap (equal --memory-swap), so a runaway notebook is killed inside
        its container instead of pushing the ship into swap or the host's OOM killer onto the
        agent; and a process cap, so a fork bomb stops in its container."""
        args: List[str] = []
        if self.memory_mib:
            memory = f"{self.memory_mib}m"
            args += ["--memory", memory, "--memory-swap", memory]
        if self.pids_limit:
            args += ["--pids-limit", str(self.pids_limit)]
        return args

    def run_args(self, spec: ContainerSpec, workdir: Path, env_file: str) -> List[str]:
        """The `docker run` arguments (no secrets: the env is in env_file)."""
        scope = ["--label", f"{SCOPE_LABEL}={self.scope}"] if self.scope else []
        return [
            "run", "--detach",
            "--name", self.cname(spec.name),
            "--label", f"{LABEL}={spec.name}", *scope,
            "--network", "host",
            "--restart", "no",
            "--user", "{}:{}".format(*NOTEBOOK_USER),
            "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            *self.limit_args(),
            "--env-file", env_file,
            "--volume", f"{workdir}:{self.mount_path}",
            spec.image,
            *spec.cmd,
        ]  # fmt: skip

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

    def _state(self, name: str) -> Tuple[bool, str]:
        """(running, exit code) of a container. Through the engine's socket when there is one:
        the agent asks several times a second per starting container, and each `docker`
        CLI run costs a tenth of a CPU second, which a room of starts on one host feels."""
        try:
            conn = _UnixHTTPConnection(self.socket, timeout=10)
            try:
                conn.request("GET", f"/containers/{self.cname(name)}/json")
                reply = conn.getresponse()
                body = reply.read()
            finally:
                conn.close()
        except (OSError, http.client.HTTPException):
            body, reply = b"", None
        if reply is not None and reply.status == 200:
            state = json.loads(body)["State"]
            return bool(state["Running"]), str(state["ExitCode"])
        if reply is not None and reply.status == 404:
            raise RuntimeFailure(f"container {self.cname(name)} is gone (removed from outside)")
        out = self._run(
            "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", self.cname(name)
        )
        running, _, code = out.partition(" ")
        return running == "true", code

    def exited(self, name: str) -> Optional[str]:
        try:
            running, code = self._state(name)
        except RuntimeFailure as exc:
            return str(exc)
        if running:
            return None
        try:  # the container's stdout and stderr, interleaved as written
            logs = subprocess.run(
                [self.docker, "logs", "--tail", "20", self.cname(name)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=30,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            logs = ""
        return f"exited with code {code}: {' | '.join(logs.strip().splitlines())[-2000:]}"

    def stop(self, name: str, timeout: float = 10.0) -> None:
        """Stop and remove; a container already gone (stopped after a failed health check,
        then dropped from the desired state) is stopped."""
        try:
            self._run("stop", "--time", str(int(timeout)), self.cname(name), timeout=timeout + 30)
        except RuntimeFailure as exc:
            if "No such container" not in str(exc):
                raise
        self._run("rm", "-f", self.cname(name))
