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
