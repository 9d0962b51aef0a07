"""Outputs: complete or absent, never outside the target, never replacing a folder without --overwrite, one writer at a time."""

from __future__ import annotations

import fcntl
import os
import stat

import pytest

from lm_eval_lingreg.errors import OutputError
from lm_eval_lingreg.outputs import atomic_path, check_writable, output_lock, write_json


def test_a_failed_write_leaves_the_target_untouched(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ZeroDivisionError
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_temporaries_of_a_killed_run_are_removed_by_the_next_run(tmp_path):
    (tmp_path / ".ckpt.lingreg-tmp-999999-abc").mkdir()
    (tmp_path / ".ckpt.lingreg-tmp-999999-abc" / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / ".ckpt.lingreg-old-999999-def").mkdir()
    (tmp_path / ".other.lingreg-tmp-1-x").write_text("another target's")
    with atomic_path(tmp_path / "ckpt", directory=True) as tmp:
        (tmp / "f").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.lingreg-tmp-1-x", "ckpt"]


def test_cleaning_a_folder_removes_only_our_own_leftovers(tmp_path):
    """A user's dot-files that merely look like temporaries or locks survive; ours from a killed run go."""
    from lm_eval_lingreg.outputs import clean_folder

    mine = [".zh.safetensors.lingreg-tmp-123-abc", ".ar.safetensors.lingreg-old-9-x", ".zh.safetensors.lingreg-lock"]
    theirs = [".thesis.old-2023", ".db.tmp-keep", ".mail.lock", ".notes.lingreg-tmp-", ".x.lingreg-tmp-abc-1", "plain.lingreg-lock"]
    (tmp_path / ".thesis.old-2023").mkdir()
    (tmp_path / ".thesis.old-2023" / "ch1.tex").write_text("p")
    for name in mine + theirs[1:]:
        (tmp_path / name).write_text("x")
    assert sorted(p.name for p in clean_folder(tmp_path)) == sorted(mine)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs) and (tmp_path / ".thesis.old-2023" / "ch1.tex").read_text() == "p"


@pytest.mark.parametrize("name", [".", ".."])
def test_the_current_folder_and_its_parents_are_never_replaced(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(OutputError):
        with atomic_path(name, directory=True, overwrite=True) as tmp:
            (tmp / "f").write_text("y")
    assert (tmp_path / "keep.txt").read_text() == "x" and not [p for p in tmp_path.parent.iterdir() if p.name.startswith("..")]


def test_folder_and_file_targets_do_not_replace_each_other(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputError, match="not a folder"):
        check_writable(tmp_path / "afile", directory=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(tmp_path / "adir")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable(tmp_path / "afile" / "x.json")


def test_unwritable_places_are_found_before_any_work():
    with pytest.raises(OutputError, match="not writable"):
        check_writable("/sys/lingreg-test/out.json")


def test_the_lock_refuses_a_second_writer_and_disappears_afterwards(tmp_path):
    target = tmp_path / "scores"
    with output_lock(target):
        with output_lock(target):  # re-entrant in this process
            assert (tmp_path / ".scores.lingreg-lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".scores.lingreg-lock").exists()
    with open(tmp_path / ".scores.lingreg-lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="another lingreg process"):
            write_json(target, {})
    assert not target.exists()


def test_where_flock_is_missing_the_lock_is_filelock_s_with_the_same_behaviour(tmp_path, monkeypatch):
    """Windows has no fcntl: the lock is then filelock's. Here (flock under filelock too) it refuses the same holder."""
    from lm_eval_lingreg import outputs

    monkeypatch.setattr(outputs, "_FLOCK", False)
    target = tmp_path / "scores"
    lock = tmp_path / ".scores.lingreg-lock"
    with output_lock(target):
        with output_lock(target):  # re-entrant in this process
            assert lock.exists() and outputs._held(lock)
    assert not lock.exists()
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="being written by another lingreg process"):
            write_json(target, {})
        assert outputs._held(lock) and outputs.clean_folder(tmp_path) == []
    assert not target.exists() and not outputs._held(lock)
    assert outputs.clean_folder(tmp_path) == [lock] and list(tmp_path.iterdir()) == []
    write_json(target, {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores"]


def test_loading_a_region_imports_where_there_is_no_fcntl():
    import subprocess
    import sys

    code = "import sys; sys.modules['fcntl'] = None\nfrom lm_eval_lingreg.region_io import load_region, save_region\nprint('imported')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["imported"]


def test_outputs_get_normal_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    f = write_json(tmp_path / "a.json", {"x": 1})
    with atomic_path(tmp_path / "d", directory=True) as tmp:
        (tmp / "f").write_text("x")
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask and stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~umask
