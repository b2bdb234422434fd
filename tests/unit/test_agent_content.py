"""Tutorial content layered under the attendee's files across redeploys."""

from __future__ import annotations

from pathlib import Path

from campfleet.agent.content import MANIFEST, sync_content


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_redeploy_updates_untouched_keeps_changed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    write(home, {"mine.py": "attendee's own"})
    v1 = write(tmp_path / "v1", {"lesson1.ipynb": "v1", "data/a.csv": "1", "mine.py": "image's"})
    first = sync_content(v1, home)
    assert sorted(first.copied) == ["data/a.csv", "lesson1.ipynb"]
    assert first.kept == ["mine.py"] and (home / "mine.py").read_text() == "attendee's own"
    assert (home / MANIFEST).exists()

    (home / "lesson1.ipynb").write_text("my edits")  # attendee changes a lesson
    (home / "data/a.csv").unlink()  # and deletes a data file
    v2 = write(tmp_path / "v2", {"lesson1.ipynb": "v2", "data/a.csv": "2", "lesson2.ipynb": "new"})
    second = sync_content(v2, home)
    assert sorted(second.copied) == ["data/a.csv", "lesson2.ipynb"]
    assert second.kept == ["lesson1.ipynb"]
    assert (home / "lesson1.ipynb").read_text() == "my edits"
    assert (home / "data/a.csv").read_text() == "2"

    v3 = write(tmp_path / "v3", {"lesson2.ipynb": "fixed", "data/a.csv": "2"})
    third = sync_content(v3, home)  # untouched copies follow the image
    assert third.copied == ["lesson2.ipynb"] and (home / "lesson2.ipynb").read_text() == "fixed"


def test_same_content_twice_copies_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    src = write(tmp_path / "src", {"a.txt": "x"})
    sync_content(src, home)
    again = sync_content(src, home)
    assert again.copied == [] and again.kept == []


def test_corrupt_manifest_treats_files_as_the_attendees(tmp_path: Path) -> None:
    home = write(tmp_path / "home", {"a.txt": "edited", MANIFEST: "not json"})
    src = write(tmp_path / "src", {"a.txt": "x"})
    result = sync_content(src, home)
    assert result.kept == ["a.txt"] and (home / "a.txt").read_text() == "edited"


def test_symlinks_planted_by_the_attendee_are_never_followed(tmp_path: Path) -> None:
    """The agent runs as root on a ship: a symlink in the volume must not redirect a write."""
    home = tmp_path / "home"
    home.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = write(outside, {"victim": "precious"}) / "victim"
    (home / "lessons").symlink_to(outside)  # a directory of the content, redirected
    (home / ".top.txt.campfleet-tmp").symlink_to(victim)  # the temporary of a file
    (home / f"{MANIFEST}.campfleet-tmp").symlink_to(victim)  # the manifest's temporary
    (home / "link.txt").symlink_to(victim)  # a content file itself
    src = write(tmp_path / "src", {"lessons/l1.ipynb": "x", "top.txt": "t", "link.txt": "l"})

    result = sync_content(src, home)

    assert sorted(result.kept) == ["lessons/l1.ipynb", "link.txt"]
    assert result.copied == ["top.txt"] and (home / "top.txt").read_text() == "t"
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert victim.read_text() == "precious"
    assert not (home / MANIFEST).is_symlink() and (home / "link.txt").is_symlink()
