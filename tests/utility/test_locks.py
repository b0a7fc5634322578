import os
import subprocess
import sys

import pytest

from utility.errors import UserError
from utility.locks import FolderLock

HOLD = """
import sys, time
from utility.locks import FolderLock
FolderLock(sys.argv[1], "training run").acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_holder_is_refused_with_the_holder_named_and_the_lock_dies_with_its_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"in use by another run \(process {holder.pid}, started .*-c"):
            FolderLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(str(tmp_path)) as lock:  # the kernel released it with the killed process
        assert lock._handle is not None


def test_release_lets_the_next_one_in_and_a_planted_link_is_refused(tmp_path):
    first = FolderLock(str(tmp_path)).acquire()
    first.release()
    FolderLock(str(tmp_path)).acquire().release()
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(tmp_path / "victim", other / ".lock")
    with pytest.raises(UserError, match="symbolic link"):
        FolderLock(str(other)).acquire()
    assert not (tmp_path / "victim").exists()


def test_a_file_where_the_folder_should_be_is_named(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(UserError, match="taken is a file, not a folder"):
        FolderLock(str(tmp_path / "taken")).acquire()
