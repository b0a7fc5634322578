"""Writing output files so that nothing is lost or written through a planted link.

Every file the toolkit writes goes through `write_atomically` (a whole file) or `append_line` (a log):
- a whole file is written to a temporary file in the same folder, synced, and renamed over the target:
  a crash leaves the old file or the new one, never half of one, and a symbolic link standing at the
  target is replaced by the file, never followed (its target is left untouched);
- a line is appended to a log opened with O_NOFOLLOW: a symbolic link there is refused.
"""
import os
import tempfile

from utility.errors import UserError


def write_atomically(path, write, binary=True):
    """Create or replace the file `path` with what `write(file_object)` writes."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp makes 0600; an output file gets the usual mode
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)  # renames over a link: the link goes, its target stays as it was
    except BaseException:
        _remove_quietly(temporary)
        raise


def write_text(path, text):
    write_atomically(path, lambda f: f.write(text), binary=False)


def save_npy(path, array):
    import numpy as np

    write_atomically(path, lambda f: np.save(f, array))


def append_line(path, line):
    """Append `line` and a newline to the log `path` (created if need be); UserError if it is a symbolic link."""
    path = os.fspath(path)
    try:
        handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError:
        if os.path.islink(path):
            raise UserError(f"{path} is a symbolic link: refusing to write through it "
                            "(remove it, or choose another file)") from None
        raise
    with os.fdopen(handle, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def fsync_folder(path):
    """Make a folder's entries (files created, renamed or removed in it) durable on disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
