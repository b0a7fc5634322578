"""Crash-safe checkpoint folders: arrays in, arrays out (no Paddle here).

Writing. Files go to a fresh `.tmp-<N>-<pid>` directory, state.json last, each synced to disk;
the directory is then renamed into place and `latest` is moved by an atomic rename of a new link.
Replacing an existing <N> moves `latest` onto a complete copy before each step (the new one, then
the old one, then <N> again), so `latest` names a complete checkpoint at every instant a process
can be killed; `remove_stale_temporaries` finishes or undoes what a killed save left. Whatever
stands at <N> or `latest` (a symbolic link, a file) is moved aside and deleted as a name, never
written through. Parameters with NaN or infinite values are refused (NonFiniteError), so `latest`
never moves to a diverged network.
"""
import json
import os
import re
import shutil

from utility.errors import UserError
from utility.files import fsync_folder

PARAMS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST = "latest"
BEST = "best"     # the checkpoint of the best validation Recall@1 so far
TMP = ".tmp-"     # a save in progress: .tmp-<N>-<pid>, and the new link .tmp-latest-<pid>
OLD = ".old-"     # the checkpoint being replaced: .old-<N>-<pid>
# What saves before this layout left behind: <N>.old-<pid> and latest.tmp-<pid>.
_LEGACY_LEFTOVER = re.compile(r"^(.+\.old|latest\.tmp)-\d+$")


class NonFiniteError(UserError):
    """The network holds NaN or infinite values: training diverged, nothing was saved."""


# ---------------------------------------------------------------------------------------------
# Saving

def write_checkpoint(model_dir, name, params, slots, state):
    """Save `params` and `slots` ({name: array}) and `state` (a JSON-able dict) as model_dir/name; point
    `latest` at it. Returns the checkpoint's path.

    Raises NonFiniteError (a UserError) without touching model_dir when a parameter or optimizer
    value is NaN or infinite, and UserError naming the path when the disk refuses (read-only, full,
    a file in the way); the temporary directory is removed then.
    """
    import safetensors.numpy

    name = str(name)
    if not name or name in (".", "..") or name.startswith(".") or os.sep in name or name == LATEST:
        raise ValueError(f"bad checkpoint name {name!r}")
    bad = non_finite_names({**params, **slots})
    if bad:
        raise NonFiniteError(f"not saving checkpoint {name}: {few_names(bad)} hold NaN or infinite values "
                             f"(training diverged; try a lower --lr); {os.path.join(model_dir, LATEST)} "
                             "still names the last good checkpoint")
    final = os.path.join(model_dir, name)
    tmp = os.path.join(model_dir, f"{TMP}{name}-{os.getpid()}")
    try:
        os.makedirs(model_dir, exist_ok=True)
        _remove(tmp)
        os.mkdir(tmp)
        _write_file(os.path.join(tmp, PARAMS_FILE), safetensors.numpy.save(params))
        if slots:
            _write_file(os.path.join(tmp, OPTIMIZER_FILE), safetensors.numpy.save(slots))
        _write_file(os.path.join(tmp, STATE_FILE), json.dumps(state, indent=1, sort_keys=True).encode())
        fsync_folder(tmp)
        _install(model_dir, name, tmp)
    except OSError as err:
        _abandon(model_dir, name)
        where = err.filename or model_dir
        raise UserError(f"cannot save checkpoint {final}: {err.strerror or err} ({where})") from None
    except BaseException:  # Ctrl-C, and errors that are not the disk's
        _abandon(model_dir, name)
        raise
    return final


def _abandon(model_dir, name):
    """After a failed save: `latest` back on a complete checkpoint, then this process's temporaries removed."""
    try:
        _repair_latest(model_dir)
        keep = _latest_target(model_dir)
    except (OSError, UserError):
        keep = None
    for entry in (f"{TMP}{name}-{os.getpid()}", f"{OLD}{name}-{os.getpid()}", f"{TMP}{LATEST}-{os.getpid()}"):
        if entry != keep:
            _remove_quietly(os.path.join(model_dir, entry))



def non_finite_names(arrays):
    """Sorted names of the floating-point arrays that hold a NaN or an infinity."""
    import numpy as np

    return sorted(name for name, a in arrays.items() if a.dtype.kind in "fc" and not np.isfinite(a).all())


def _install(model_dir, name, tmp):
    """Rename the complete `tmp` to model_dir/name and point `latest` at it, `latest` valid throughout."""
    final = os.path.join(model_dir, name)
    old, follows = None, False
    if os.path.lexists(final):
        old_name = f"{OLD}{name}-{os.getpid()}"
        old = os.path.join(model_dir, old_name)
        _remove(old)
        follows = _latest_target(model_dir) == name
        if follows:                                   # latest -> the new copy while <N> moves away
            _point_latest(model_dir, os.path.basename(tmp))
        os.rename(final, old)                         # a link or file at <N> moves as a name, unfollowed
        if follows:                                   # latest -> the old copy while the new one moves in
            _point_latest(model_dir, old_name)
    try:
        os.rename(tmp, final)
    except OSError:
        if old and not follows and not os.path.lexists(final):  # put the old one back (when latest is
            os.rename(old, final)                                # on it, _abandon finishes the move instead)
        raise
    _point_latest(model_dir, name)
    if old:
        _remove(old)


def _latest_target(model_dir):
    return link_target(model_dir, LATEST)


def link_target(model_dir, link_name):
    """The name `latest` or `best` points to, or None."""
    link = os.path.join(model_dir, link_name)
    return os.readlink(link) if os.path.islink(link) else None


def _point_latest(model_dir, target):
    _point_link(model_dir, LATEST, target)


def _point_link(model_dir, link_name, target):
    link = os.path.join(model_dir, link_name)
    if os.path.lexists(link) and not os.path.islink(link):
        raise UserError(f"{link} is not the symbolic link train.py keeps there; move it away")
    tmp_link = os.path.join(model_dir, f"{TMP}{link_name}-{os.getpid()}")
    _remove(tmp_link)
    os.symlink(target, tmp_link)
    os.replace(tmp_link, link)
    fsync_folder(model_dir)


def point_best(model_dir, name):
    """Point `best` at the checkpoint model_dir/name (an atomic rename of a new link, like `latest`)."""
    try:
        _point_link(model_dir, BEST, str(name))
    except OSError as err:
        raise UserError(f"cannot point {os.path.join(model_dir, BEST)} at {name}: {err.strerror or err}") from None


def prune(model_dir, keep):
    """Delete all but the `keep` most recently saved numbered checkpoints, never what `latest` or `best` names;
    returns the names deleted. Each is first renamed to `.old-<N>-<pid>` (a name no link points to), so a kill
    mid-deletion leaves a leftover that remove_stale_temporaries deletes, never half a checkpoint under <N>."""
    saved = [entry for entry in os.listdir(model_dir) if entry.isdigit()
             and _is_complete(os.path.join(model_dir, entry))]
    saved.sort(key=lambda entry: (os.path.getmtime(os.path.join(model_dir, entry, STATE_FILE)), int(entry)))
    protected = {link_target(model_dir, LATEST), link_target(model_dir, BEST)}
    doomed = [entry for entry in saved[:max(len(saved) - keep, 0)] if entry not in protected]
    try:
        for entry in doomed:
            aside = os.path.join(model_dir, f"{OLD}{entry}-{os.getpid()}")
            os.rename(os.path.join(model_dir, entry), aside)
            _remove(aside)
    except OSError as err:
        raise UserError(f"cannot delete an old checkpoint in {model_dir}: {err.strerror or err}") from None
    return doomed


def _write_file(path, data):
    with open(path, "xb") as f:  # "x": never writes through a file or link already there
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _remove(path):
    """Delete path as a name: a link or a file is unlinked (never followed), a directory removed with its contents."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _remove_quietly(path):
    try:
        _remove(path)
    except OSError:
        pass


def remove_stale_temporaries(model_dir):
    """Clean up after saves that were killed: returns the names removed from model_dir.

    A `latest` left on a temporary copy is pointed back at <N> (a temporary copy that is complete
    and alone takes the name <N>); then `.tmp-*` and `.old-*` entries are deleted, except those of
    another live process.
    """
    if not os.path.isdir(model_dir):
        return []
    removed = []
    try:
        _repair_latest(model_dir)
        for entry in sorted(os.listdir(model_dir)):
            leftover = entry.startswith((TMP, OLD)) or _LEGACY_LEFTOVER.match(entry)
            if not leftover or _owned_by_other_live_process(entry) or entry == _latest_target(model_dir):
                continue
            _remove(os.path.join(model_dir, entry))
            removed.append(entry)
    except OSError as err:
        raise UserError(f"cannot clean up {model_dir}: {err.strerror or err} ({err.filename or model_dir})") from None
    return removed


def _repair_latest(model_dir):
    """Point a `latest` left on a temporary copy of <N> back at <N>, finishing the move of a new <N> if needed."""
    target = _latest_target(model_dir)
    if not target or not target.startswith((TMP, OLD)) or _owned_by_other_live_process(target):
        return
    name, pid = target[len(TMP if target.startswith(TMP) else OLD):].rsplit("-", 1)
    final = os.path.join(model_dir, name)
    new, old = f"{TMP}{name}-{pid}", f"{OLD}{name}-{pid}"
    if not os.path.lexists(final) and _is_complete(os.path.join(model_dir, new)):
        if target == new and _is_complete(os.path.join(model_dir, old)):
            _point_latest(model_dir, old)  # latest stays on a complete copy while the new one moves
        os.rename(os.path.join(model_dir, new), final)
    if _is_complete(final):
        _point_latest(model_dir, name)


def _is_complete(directory):
    return os.path.isdir(directory) and not os.path.islink(directory) and \
        os.path.isfile(os.path.join(directory, STATE_FILE))


def _owned_by_other_live_process(entry):
    pid = entry.rsplit("-", 1)[-1]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# Finding and reading

def resolve(path):
    """The checkpoint directory that `path` names (a checkpoint, its `latest` link, or a model dir)."""
    if path is None:
        return None
    if not os.path.exists(path):
        raise UserError(f"checkpoint directory {path} does not exist")
    if os.path.isdir(path) and not parameter_files(path) and os.path.exists(os.path.join(path, LATEST)):
        path = os.path.join(path, LATEST)
    return os.path.realpath(path)


def parameter_files(directory):
    """(kind, parameter file, optimizer file or None) of `directory`, or None for per-variable files.

    Ours (model.safetensors) first, then Paddle's (model.pdparams, or a lone *.pdparams),
    then a lone *.safetensors, then a lone torch *.pth (kind "torch").
    """
    if not os.path.isdir(directory):
        return None
    ours = os.path.join(directory, PARAMS_FILE)
    if os.path.isfile(ours):
        return "safetensors", ours, _existing(os.path.join(directory, OPTIMIZER_FILE))
    files = sorted(os.listdir(directory))
    pdparams = [f for f in files if f.endswith(".pdparams")]
    prefix = "model" if "model.pdparams" in pdparams else (pdparams[0][:-len(".pdparams")] if len(pdparams) == 1 else None)
    if prefix is not None:
        prefix = os.path.join(directory, prefix)
        return "pickle", prefix + ".pdparams", _existing(prefix + ".pdopt")
    for kind, ending in (("safetensors", ".safetensors"), ("torch", ".pth")):
        found = [f for f in files if f.endswith(ending)]
        if len(found) == 1:
            return kind, os.path.join(directory, found[0]), None
    return None


def _existing(path):
    return path if os.path.isfile(path) else None


def read_state(directory):
    """state.json of a checkpoint made by train.py, or None for a plain parameter directory."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            state = json.loads(f.read().decode("utf-8"))
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{path} is damaged (truncated or not JSON: {err}); "
                        "use another checkpoint, or delete this one") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is damaged (not a JSON object)")
    return state


def read_safetensors(path):
    """{name: array} of a safetensors file."""
    import safetensors
    import safetensors.numpy

    try:
        return safetensors.numpy.load_file(path)
    except (safetensors.SafetensorError, OSError, ValueError, TypeError) as err:
        raise UserError(f"{path} is damaged or not a safetensors file ({str(err).strip()})") from None


def few_names(names, count=4):
    """The first `count` names and how many more, for one-line messages."""
    shown = ", ".join(names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")
