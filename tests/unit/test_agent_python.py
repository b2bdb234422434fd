"""protocol.py, the agent and the contracts it reads run on the ship AMI's Python, stdlib only.

The ship AMI is Debian 12 (bookworm), whose python3 is 3.11: the floor checked here.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SHIP_CODE = [
    ROOT / "campfleet" / "protocol.py",
    ROOT / "campfleet" / "tags.py",
    *sorted((ROOT / "campfleet" / "agent").glob("*.py")),
    *sorted((ROOT / "campfleet" / "contracts").glob("*.py")),
]
FLOOR = (3, 11)  # Debian bookworm's python3


def vermin(*paths: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("vermin")
    return subprocess.run(
        [str(exe), "-t=3.11-", "--no-tips", "--violations", *map(str, paths)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_vermin_finds_nothing_newer_than_the_floor() -> None:
    done = vermin(*SHIP_CODE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_vermin_would_catch_a_312_feature(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("type Pair = tuple[int, int]\n")
    assert vermin(bad).returncode != 0


def test_stdlib_only() -> None:
    allowed = set(sys.stdlib_module_names) | {"campfleet"}
    for path in SHIP_CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


ROUND_TRIP = """
import sys, time
assert sys.version_info[:2] == (3, 11), sys.version
from campfleet import protocol as p
import campfleet.agent.agent, campfleet.agent.__main__, campfleet.agent.docker  # noqa
key = p.derive_key(b"secret", "i-1")
c = p.ContainerStatus("", "img", "sha256:x", "running", 8888)
r = p.Report("i-1", "z", "10.0.0.1", 8888, p.ShipState.RUNNING, [c], "vol-1", seq=5, ts=time.time())
body, h = p.encode_report(r, key)
sig = h[p.HEADER_SIGNATURE]
v = p.validate(body, "i-1", sig, key, expect="report", now=time.time(), after_seq=4)
assert v.ok and v.message == r, v
d = p.Desired(3, [p.ContainerSpec("", "img", ["x"], {"A": "1"}, 8888, "/")], "vol-1")
body, h = p.encode_desired(d, "i-1", 5, time.time(), key)
sig = h[p.HEADER_SIGNATURE]
v = p.validate(body, "i-1", sig, key, expect="desired", now=time.time(), reply_to=5)
assert v.ok and v.message == d, v
import pathlib, tempfile
from campfleet.agent.content import sync_content
with tempfile.TemporaryDirectory() as t:  # the dir_fd / O_NOFOLLOW file operations
    src, home = pathlib.Path(t, "src"), pathlib.Path(t, "home")
    (src / "a").mkdir(parents=True)
    (src / "a" / "f.txt").write_text("x")
    home.mkdir()
    assert sync_content(src, home).copied == ["a/f.txt"] and (home / "a/f.txt").read_text() == "x"
print("ok")
"""


def floor_python() -> str:
    """A working python3.11, as bookworm's /usr/bin/python3 (a pyenv shim on PATH may exist
    without one behind it)."""
    for exe in ("/usr/bin/python3.11", shutil.which("python3.11")):
        if exe and Path(exe).exists():
            probe = subprocess.run(
                [exe, "-c", f"import sys; print(sys.version_info[:2] == {FLOOR})"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            if probe.stdout.strip() == "True":
                return exe
    pytest.skip("python3.11 interpreter not installed (the vermin check still ran)")


def test_runs_under_the_floor_python() -> None:
    exe = floor_python()
    done = subprocess.run(
        [exe, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + ROUND_TRIP],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}  # as the systemd unit runs it
    done = subprocess.run(
        [exe, "-s", "-m", "campfleet.agent", "--help"],
        capture_output=True, text=True, timeout=60, env=env, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0 and "--local" in done.stdout, done.stderr


def _campfleet_imports(path: Path) -> set[str]:
    """The campfleet modules a file imports (absolute imports, as the ship code uses)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == "campfleet")
    return found


def test_the_ship_image_carries_everything_the_agent_imports() -> None:
    """The ship user data copies /opt/campfleet out of the ship image; a module the agent
    imports but the Dockerfile does not copy would fail only on AWS, at boot."""
    dockerfile = (ROOT / "images" / "ship" / "Dockerfile").read_text().splitlines()
    copied = [
        source
        for line in dockerfile
        if line.startswith("COPY campfleet")
        for source in line.split()[1:-1]
    ]

    def shipped(path: Path) -> bool:
        relative = path.relative_to(ROOT).as_posix()
        return any(relative == s or relative.startswith(s.rstrip("/") + "/") for s in copied)

    todo = sorted((ROOT / "campfleet" / "agent").glob("*.py"))
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        assert shipped(path), f"{path.relative_to(ROOT)} is imported by the agent, not shipped"
        for module in _campfleet_imports(path):
            base = ROOT.joinpath(*module.split("."))
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    todo.append(candidate)
            for parent in base.parents:  # a package's __init__ runs on import too
                if parent == ROOT:
                    break
                if (parent / "__init__.py").is_file():
                    todo.append(parent / "__init__.py")
    assert ROOT / "campfleet" / "contracts" / "agentjson.py" in seen
