"""Input expansion on real trees: symlink loops, one file under two names, what is passed over, glob parity."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from genorigin.inputs import expand_inputs, scan_inputs


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.mark.timeout(60)
def test_recursive_pattern_through_symlink_loops_reads_each_file_once(tmp_path):
    root = tmp_path / "root"
    _touch(root / "a" / "img.png")
    _touch(root / "a" / "sub" / "deep.png")
    os.symlink(".", root / "a" / "here")
    pattern = str(root / "**" / "*.png")
    naive = glob.glob(pattern, recursive=True)  # follows a/here until the OS gives up (ELOOP)
    assert len(naive) > 50  # the old expansion: the same two files dozens of times
    os.symlink("..", root / "a" / "up")
    os.symlink("../..", root / "a" / "sub" / "top")  # three loops: glob.glob would take 3^40 steps now
    scan = scan_inputs([pattern])
    assert scan.paths == [root / "a" / "img.png", root / "a" / "sub" / "deep.png"] and scan.errors == []
    loops = [n for n in scan.skipped if "symlink loop" in n]
    assert {Path(n.split(": ")[0]).name for n in loops} == {"up", "here", "top"}
    assert len(scan.skipped) == len(loops)


@pytest.mark.timeout(60)
def test_links_between_folders_are_searched_once_per_folder(tmp_path):
    """level0 → level1 → … each through two links: 2^12 spellings of the last folder, which is searched once."""
    for i in range(12):
        (tmp_path / f"level{i}").mkdir()
        for link in ("a", "b"):
            os.symlink(f"../level{i + 1}", tmp_path / f"level{i}" / link)
    _touch(tmp_path / "level12" / "img.png")
    scan = scan_inputs([str(tmp_path / "level0" / "**" / "*.png")])
    assert scan.paths == [tmp_path / "level0" / Path(*["a"] * 12) / "img.png"]
    assert len(scan.skipped) == 12 and all("same folder as" in n for n in scan.skipped)


def test_one_file_under_two_names_is_read_once_under_the_first(tmp_path):
    real = _touch(tmp_path / "photo.png")
    os.symlink("photo.png", tmp_path / "alias.png")
    scan = scan_inputs([str(tmp_path / "alias.png"), str(tmp_path), str(tmp_path / "sub" / ".." / "photo.png")])
    assert scan.paths == [tmp_path / "alias.png"]
    assert scan.errors == [f"{tmp_path / 'sub' / '..' / 'photo.png'}: no such file or folder"]  # sub/ is absent
    assert scan.skipped == [f"{real}: same file as {tmp_path / 'alias.png'}, read once"]
    again = scan_inputs([str(real), str(real)])  # the same spelling twice: once, no note
    assert again.paths == [real] and again.skipped == []


def test_what_a_folder_scan_passes_over_is_noted(tmp_path):
    _touch(tmp_path / "ok.jpg")
    (tmp_path / "dir.png").mkdir()
    os.symlink("nowhere.png", tmp_path / "broken.webp")
    os.symlink("self.png", tmp_path / "self.png")
    os.mkfifo(tmp_path / "fifo.jpeg")
    _touch(tmp_path / "scan.tiff")
    _touch(tmp_path / "notes.txt")
    scan = scan_inputs([str(tmp_path)])
    assert scan.paths == [tmp_path / "ok.jpg"] and scan.errors == []
    notes = {Path(n.split(": ")[0]).name: n.split(": ", 1)[1] for n in scan.skipped}
    assert notes == {
        "broken.webp": "broken symbolic link (to nowhere.png)",
        "dir.png": "a folder",
        "fifo.jpeg": "not a regular file (a device, pipe or socket)",
        "scan.tiff": ".tiff files are not read (PNG, JPEG or WebP)",
        "self.png": "symlink loop",
    }


def test_a_pattern_notes_folders_named_like_images_and_reports_no_match(tmp_path):
    (tmp_path / "x.png").mkdir()
    _touch(tmp_path / "y.png")
    scan = scan_inputs([str(tmp_path / "*.png"), str(tmp_path / "*.webp")])
    assert scan.paths == [tmp_path / "y.png"]
    assert scan.skipped == [f"{tmp_path / 'x.png'}: a folder"]
    assert scan.errors == [f"{tmp_path / '*.webp'}: pattern matches no files"]


@pytest.mark.timeout(20)
def test_a_pipe_given_by_name_is_refused_not_opened(tmp_path):
    from helpers import tiny_generator

    from genorigin.images import ImageError, load_rgb8, read_images

    os.mkfifo(tmp_path / "fifo.png")
    assert scan_inputs([str(tmp_path / "fifo.png")]).errors == [f"{tmp_path / 'fifo.png'}: not a regular file "
                                                                "(a device, pipe or socket)"]  # fmt: skip
    with pytest.raises(ImageError, match="not a regular file"):
        load_rgb8(tmp_path / "fifo.png")  # opening it for reading would wait for a writer forever
    assert read_images([str(tmp_path)], tiny_generator()).skipped[0].endswith("not a regular file (a device, pipe or "
                                                                             "socket)")  # fmt: skip


@pytest.mark.parametrize(
    "pattern", ["*.png", "**/*.png", "**", "sub/*", "s?b/**/*.webp", "[ab].png", ".*.png", "sub/**", "*/deeper/*"]
)
def test_patterns_match_what_glob_matches_on_a_tree_without_links(tmp_path, monkeypatch, pattern):
    for name in ("a.png", "b.png", "c.jpg", ".hidden.png", "sub/d.png", "sub/e.webp", "sub/deeper/f.webp",
                 "sub/.h/g.webp", "other/deeper/h.png"):  # fmt: skip
        _touch(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    from genorigin.inputs import InputScan, _walk_pattern

    for spelled in (pattern, str(tmp_path / pattern)):  # relative and absolute spellings
        ours = sorted(set(_walk_pattern(spelled, InputScan())))
        assert ours == sorted(glob.glob(spelled, recursive=True)), spelled


def test_expand_inputs_keeps_its_two_lists(tmp_path):
    _touch(tmp_path / "a.png")
    os.symlink("missing.png", tmp_path / "gone.png")
    paths, errors = expand_inputs([str(tmp_path), str(tmp_path / "gone.png")])
    assert paths == [tmp_path / "a.png"]
    assert errors == [f"{tmp_path / 'gone.png'}: broken symbolic link (to missing.png)"]
