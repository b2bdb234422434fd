"""Local runtime for real; Docker runtime against a fake `docker` that records its argv."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from campfleet.agent.docker import DockerRuntime
from campfleet.agent.runtime import LocalRuntime, RuntimeFailure, health_ok
from campfleet.protocol import ContainerSpec

FAKE_DOCKER = """#!{python}
import json, os, sys
args = sys.argv[1:]
record = {{"argv": args}}
if "--env-file" in args:
    path = args[args.index("--env-file") + 1]
    record["env_file"] = open(path).read()
    record["env_mode"] = oct(os.stat(path).st_mode & 0o777)
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
answers = json.load(open(os.environ["FAKE_DOCKER_ANSWERS"]))
key = " ".join(args[:2]) if " ".join(args[:2]) in answers else args[0]
out, err, code = answers.get(key, ["", "", 0])
sys.stdout.write(out)
sys.stderr.write(err)
sys.exit(code)
"""


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "docker"
    exe.write_text(FAKE_DOCKER.format(python=sys.executable))
    exe.chmod(0o755)
    log = tmp_path / "docker.log"
    answers = tmp_path / "answers.json"
    answers.write_text("{}")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    monkeypatch.setenv("FAKE_DOCKER_ANSWERS", str(answers))
    # No engine socket: everything goes through the (fake) CLI.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")

    class Fake:
        def answer(self, key: str, out: str = "", err: str = "", code: int = 0) -> None:
            data = json.loads(answers.read_text())
            data[key] = [out, err, code]
            answers.write_text(json.dumps(data))

        def calls(self) -> list[dict]:
            return (
                [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            )

    return Fake()


SPEC = ContainerSpec(
    name="proj",
    image="123.dkr.ecr.eu-west-1.amazonaws.com/ship:v2",
    cmd=["jupyterhub-singleuser", "--debug"],
    env={"JUPYTERHUB_API_TOKEN": "very-secret", "JUPYTERHUB_USER": "alice"},
    port=8889,
    health_path="/user/alice/proj/api",
)


def test_docker_start_keeps_secrets_off_argv(tmp_path: Path, fake_docker) -> None:
    rt = DockerRuntime(tmp_path, mount_path="/home/jovyan")
    rt.start(SPEC, tmp_path / "vol-1")
    calls = fake_docker.calls()
    assert [c["argv"][0] for c in calls] == ["rm", "run"]
    run = calls[1]
    argv = run["argv"]
    assert "very-secret" not in " ".join(argv)
    assert "JUPYTERHUB_API_TOKEN=very-secret\n" in run["env_file"] and run["env_mode"] == "0o600"
    assert argv[argv.index("--volume") + 1] == f"{tmp_path / 'vol-1'}:/home/jovyan"
    assert argv[argv.index("--network") + 1] == "host"
    assert argv[argv.index("--name") + 1] == "campfleet-proj"
    assert argv[-3:] == [SPEC.image, "jupyterhub-singleuser", "--debug"]
    assert not list(tmp_path.glob("env-*"))  # env file removed after run


def test_docker_digest_status_and_failures(tmp_path: Path, fake_docker) -> None:
    rt = DockerRuntime(tmp_path)
    repo = SPEC.image.split(":")[0]
    fake_docker.answer("image inspect", f'sha256:id|["{repo}@sha256:abc","other@sha256:x"]')
    assert rt.digest(SPEC) == "sha256:abc"
    by_digest = ContainerSpec("proj", f"{repo}@sha256:def", [], {}, 9000)
    assert rt.digest(by_digest) == "sha256:def"  # the digest it was pulled by
    fake_docker.answer("image inspect", "sha256:localid|[]")
    assert rt.digest(SPEC) == "sha256:localid"
    fake_docker.answer("inspect", "true 0")
    assert rt.exited("proj") is None
    fake_docker.answer("inspect", "false 3")
    fake_docker.answer("logs", "", "init.sh: lesson data missing\n", 0)
    assert rt.exited("proj") == "exited with code 3: init.sh: lesson data missing"
    fake_docker.answer("pull", "", "Error: pull access denied\n", 1)
    with pytest.raises(
        RuntimeFailure, match="docker pull failed \\(1\\): Error: pull access denied"
    ):
        rt.pull(SPEC.image)
    rt.stop("proj", timeout=7)
    assert fake_docker.calls()[-2]["argv"] == ["stop", "--time", "7", "campfleet-proj"]
    # Already gone (stopped after a failed health check, then dropped from the desired state).
    fake_docker.answer("stop", "", "Error response from daemon: No such container: x\n", 1)
    rt.stop("proj")
    assert fake_docker.calls()[-1]["argv"] == ["rm", "-f", "campfleet-proj"]
    fake_docker.answer("stop", "", "Cannot connect to the Docker daemon\n", 1)
    with pytest.raises(RuntimeFailure, match="Cannot connect"):
        rt.stop("proj")


def test_docker_content_copied_once_per_image_and_cleanup(tmp_path: Path, fake_docker) -> None:
    rt = DockerRuntime(tmp_path)
    fake_docker.answer("create", "cid42\n")
    scratch = tmp_path / "scratch"
    got = rt.content(SPEC.image, scratch)
    assert got is not None and got.parent.parent == scratch and got.name == "files"
    argvs = [c["argv"] for c in fake_docker.calls()]
    assert argvs == [
        ["create", SPEC.image, "true"],
        ["cp", "cid42:/srv/campfleet/content/.", str(got)],
        ["rm", "-f", "cid42"],
    ]
    assert rt.content(SPEC.image, scratch) == got and len(fake_docker.calls()) == 3  # cached
    fake_docker.answer("cp", "", "Error: Could not find the file /srv/campfleet/content", 1)
    assert rt.content("other:1", scratch) is None
    assert rt.content("other:1", scratch) is None and len(fake_docker.calls()) == 6  # cached too
    fake_docker.answer("ps", "c1\nc2\n")
    rt.cleanup()
    assert fake_docker.calls()[-1]["argv"] == ["rm", "-f", "c1", "c2"]


def test_docker_missing_binary_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match="not found: install Docker"):
        DockerRuntime(tmp_path, docker="/nonexistent/docker").check()


SERVER = (
    "import http.server, os, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = (os.getcwd() + '|' + os.environ.get('GREETING', '')).encode()\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_runtime_env_cwd_health_stop(tmp_path: Path) -> None:
    rt = LocalRuntime(tmp_path / "state")
    rt.check()
    port = free_port()
    spec = ContainerSpec(
        "", "img", [sys.executable, "-c", SERVER, str(port)], {"GREETING": "hi"}, port, "/"
    )
    work = tmp_path / "vol"
    work.mkdir()
    rt.start(spec, work)
    try:
        deadline = time.monotonic() + 10
        while not health_ok("127.0.0.1", port, "/") and time.monotonic() < deadline:
            time.sleep(0.05)
        import urllib.request

        assert (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
            == f"{work}|hi"
        )
        assert rt.exited("") is None
        assert rt.digest(spec).startswith("sha256:") and rt.digest(spec) != rt.digest(
            ContainerSpec("", "img", ["other"])
        )
    finally:
        rt.stop("", timeout=5)
    assert not health_ok("127.0.0.1", port, "/")
    assert not list((tmp_path / "state" / "pids").iterdir())


def test_local_runtime_failure_carries_stderr_tail(tmp_path: Path) -> None:
    rt = LocalRuntime(tmp_path / "state")
    rt.check()
    script = (
        "import sys; print('setting up'); sys.stderr.write('init: lesson3 missing\\n'); sys.exit(4)"
    )
    rt.start(ContainerSpec("p", "img", [sys.executable, "-c", script]), tmp_path)
    deadline = time.monotonic() + 10
    while rt.exited("p") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    err = rt.exited("p")
    assert err.startswith("exited with code 4:") and "init: lesson3 missing" in err
    rt.stop("p")
    with pytest.raises(RuntimeFailure, match="cannot run"):
        rt.start(ContainerSpec("q", "img", ["/nonexistent/cmd"]), tmp_path)
    with pytest.raises(RuntimeFailure, match="cmd is empty"):
        rt.start(ContainerSpec("r", "img", []), tmp_path)


def test_local_runtime_cleanup_kills_leftovers(tmp_path: Path) -> None:
    rt = LocalRuntime(tmp_path / "state")
    rt.check()
    rt.start(
        ContainerSpec("", "img", [sys.executable, "-c", "import time; time.sleep(60)"]), tmp_path
    )
    proc = rt.procs[""]
    LocalRuntime(tmp_path / "state").cleanup()  # a restarted agent
    assert proc.wait(5) == -9
