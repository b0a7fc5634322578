import os

import numpy as np
import pytest

from utility.errors import UserError
from utility.files import append_line, save_npy, write_atomically, write_text


def test_a_planted_link_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    target = tmp_path / "out" / "paths.txt"
    target.parent.mkdir()
    os.symlink(victim, target)
    write_text(target, "new\n")
    assert victim.read_text() == "keep\n"
    assert not target.is_symlink() and target.read_text() == "new\n"
    os.symlink(victim, tmp_path / "out" / "features.npy")
    save_npy(tmp_path / "out" / "features.npy", np.arange(3))
    assert victim.read_text() == "keep\n" and np.load(tmp_path / "out" / "features.npy").tolist() == [0, 1, 2]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def fail_midway(f):
        f.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        write_atomically(target, fail_midway)
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["metrics.json"]


def test_folders_are_made(tmp_path):
    write_text(tmp_path / "a" / "b" / "c.txt", "x")
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "x"


def test_appending_refuses_a_link_and_appends_otherwise(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    os.symlink(victim, tmp_path / "metrics.jsonl")
    with pytest.raises(UserError, match="symbolic link"):
        append_line(tmp_path / "metrics.jsonl", "{}")
    assert victim.read_text() == "keep\n"
    append_line(tmp_path / "log.jsonl", '{"a": 1}')
    append_line(tmp_path / "log.jsonl", '{"a": 2}')
    assert (tmp_path / "log.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'


def test_an_output_file_gets_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "curves.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "curves.txt").stat().st_mode & 0o777 == 0o644
