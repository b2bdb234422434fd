"""campfleet.images: the scripts' failures reach the caller as one line with their reason
(the Docker tests then fail with it instead of skipping)."""

from __future__ import annotations

from pathlib import Path

import pytest

from campfleet import images


def script(tmp_path: Path, name: str, body: str) -> None:
    (tmp_path / name).write_text(f"#!/usr/bin/env bash\n{body}\n")


def test_an_engine_that_cannot_start_is_one_line_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "SCRIPTS", tmp_path)
    script(tmp_path, "docker-engine.sh", "echo 'docker-engine: started dockerd'\n"
           "echo 'failed to create NAT chain DOCKER: iptables not found' >&2\nexit 1")  # fmt: skip
    said: list[str] = []
    with pytest.raises(images.ImageError) as exc:
        images.ensure_images(progress=said.append)
    assert str(exc.value) == (
        "docker-engine.sh failed: failed to create NAT chain DOCKER: iptables not found"
    )
    assert said == ["docker-engine: started dockerd"]


def test_bases_are_read_from_the_scripts_last_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "SCRIPTS", tmp_path)
    script(
        tmp_path, "build-bases.sh", "echo 'build-bases: cached (abc)'\necho ship=s:1\necho mux=m:1"
    )
    assert images.ensure_bases() == {"ship": "s:1", "mux": "m:1"}
    script(tmp_path, "build-bases.sh", "echo ship=s:1")
    with pytest.raises(images.ImageError, match="did not name both bases"):
        images.ensure_bases()


def test_a_missing_script_says_where_to_run_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "SCRIPTS", tmp_path / "nowhere")
    with pytest.raises(images.ImageError, match="is missing: run from a campfleet checkout"):
        images.ensure_engine()
