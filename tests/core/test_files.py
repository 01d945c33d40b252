"""core.files: a write either lands whole or leaves the old file and no temporary behind."""

import pytest

from core.files import atomic_path, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a n")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_unique_temporaries_do_not_collide_and_end_in_tmp(tmp_path):
    target = tmp_path / "clip.mp4"
    with atomic_path(target, unique=True) as a, atomic_path(target, unique=True) as b:
        assert a != b and a.name.endswith(".tmp") and a.name.startswith(".")
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # the outer block renames last
    write_text_atomic(target, "synced", fsync=True)
    assert target.read_text() == "synced"
