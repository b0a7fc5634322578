"""One process at a time in a folder: an exclusive lock on `<folder>/.lock`, released by the kernel when the
process ends however it ends (fcntl.flock), so a killed run never leaves a stale lock behind.

    lock = FolderLock(save_dir, "training run")
    lock.acquire()          # UserError naming the process that holds it
    ...
    lock.release()

The lock file holds the holder's process id and command line, for the message a second process prints.
"""
import fcntl
import os
import sys
import time

from utility.errors import UserError

LOCK_FILE = ".lock"


class FolderLock:
    def __init__(self, folder, what="run", wait=False):
        """`wait`: block until the lock is free (short critical sections), instead of refusing at once."""
        self.path = os.path.join(folder, LOCK_FILE)
        self.what = what
        self.wait = wait
        self._handle = None

    def acquire(self, wait=None):
        """Take the lock; unless waiting, UserError at once when another process holds it."""
        wait = self.wait if wait is None else wait
        folder = os.path.dirname(self.path) or "."
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UserError(f"{folder} is a file, not a folder")
        os.makedirs(folder, exist_ok=True)
        try:
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError:
            if os.path.islink(self.path):
                raise UserError(f"{self.path} is a symbolic link: remove it (the lock file is the toolkit's own)")
            raise
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _read_holder(handle)
            os.close(handle)
            raise UserError(f"{os.path.dirname(self.path)} is in use by another {self.what}"
                            f"{f' ({holder})' if holder else ''}: wait for it to end, or choose another folder")
        os.ftruncate(handle, 0)
        os.write(handle, f"process {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                         f"{' '.join(sys.argv)[:300]}\n".encode())
        self._handle = handle
        return self

    def release(self):
        if self._handle is not None:
            os.close(self._handle)  # closing the descriptor releases the lock
            self._handle = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_holder(handle):
    try:
        return os.pread(handle, 400, 0).decode(errors="replace").strip()
    except OSError:
        return ""
