"""Atomic, exclusive writes (sharpdepth_core.files): the one way the project writes a file a user may
share a folder with."""
from __future__ import annotations

import os

import pytest

from sharpdepth_core import files


def test_a_link_planted_at_the_temporary_name_is_never_followed(tmp_path, monkeypatch):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    tokens = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: next(tokens))
    planted = out / f".sharpdepth-result.bin.{os.getpid()}-aaaaaaaaaaaa.tmp"  # the name it would pick first
    planted.symlink_to(outside)
    files.write_bytes(out / "result.bin", b"new")
    assert outside.read_text() == "precious" and planted.is_symlink() and os.readlink(planted) == str(outside)
    assert (out / "result.bin").read_bytes() == b"new"
    assert sorted(p.name for p in out.iterdir()) == sorted([planted.name, "result.bin"])


def test_a_failed_write_leaves_the_target_and_no_temporary_file(tmp_path):
    target = tmp_path / "result.bin"
    files.write_bytes(target, b"whole")
    with pytest.raises(RuntimeError), files.atomic_write(target) as f:
        f.write(b"half")
        raise RuntimeError("disk gone")
    assert target.read_bytes() == b"whole" and [p.name for p in tmp_path.iterdir()] == ["result.bin"]


def test_a_link_at_the_target_is_replaced_not_written_through(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    link = tmp_path / "result.txt"
    link.symlink_to(outside)
    files.write_text(link, "ours")
    assert outside.read_text() == "precious" and not link.is_symlink() and link.read_text() == "ours"


def test_written_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        files.write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640


# --- replacing a folder: what counts as the project's own leftovers (issue 26 A, B) ------------------


def _earlier_save(folder):
    with files.replacing_dir(folder) as tmp:
        (tmp / "model.json").write_text("1")
    return folder


@pytest.mark.parametrize("user_entry", [".sharpdepth-notes/thesis.txt", ".sharpdepth-predict.json",
                                        ".sharpdepth-partial-abcdefgh/thesis.txt", ".sharpdepth-old-x/.sharpdepth-scratch"])
def test_a_users_entry_named_like_a_leftover_is_refused_and_kept(tmp_path, user_entry):
    """A name proves nothing: only a scratch folder holding the marker written for its own name is a
    crashed save's leftover. Anything else named `.sharpdepth-*` is the user's, named and never deleted."""
    folder = _earlier_save(tmp_path / "model")
    user = folder / user_entry
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_text("a user's thesis")
    with pytest.raises(ValueError, match=rf"refusing to replace .*it holds {user_entry.split('/')[0]}"):
        with files.replacing_dir(folder) as tmp:
            (tmp / "model.json").write_text("2")
    assert user.read_text() == "a user's thesis" and (folder / "model.json").read_text() == "1"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["model.json", user_entry.split("/")[0]])


def test_a_crashed_saves_scratch_folder_is_removed_and_nothing_is_left(tmp_path):
    folder = _earlier_save(tmp_path / "model")
    leftover = files.scratch_dir(folder)  # what a save killed half-way leaves
    (leftover / "new").mkdir()
    (leftover / "new" / "model.json").write_text("half")
    assert files.is_scratch(leftover) and not files.is_scratch(folder)
    forged = folder / ".sharpdepth-partial-forged"  # a marker for another name proves nothing
    forged.mkdir()
    (forged / files.SCRATCH_MARK).write_text((leftover / files.SCRATCH_MARK).read_text())
    assert not files.is_scratch(forged)
    forged.rename(tmp_path / "forged")
    with files.replacing_dir(folder) as tmp:
        (tmp / "model.json").write_text("2")
    assert [p.name for p in folder.iterdir()] == ["model.json"] and (folder / "model.json").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forged", "model"]  # no scratch beside it either


def test_a_recorded_file_is_the_projects_only_while_its_content_is_unchanged(tmp_path):
    plan = tmp_path / "unet-fp16-1x8x6x8-gpu-sm90-trt10-0123456789ab.plan"
    files.write_recorded(plan, b"an engine")
    record = plan.with_name(plan.name + ".sha256")
    assert files.read_recorded(plan) == b"an engine" and files.is_recorded(plan) and files.is_recorded(record)
    plan.write_bytes(b"mine")
    assert files.read_recorded(plan) is None and not files.is_recorded(plan) and not files.is_recorded(record)
    mine = tmp_path / "unet-myplan.plan"
    mine.write_text("mine")
    assert not files.is_recorded(mine)
