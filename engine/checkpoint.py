"""Checkpoints: writing them safely, resuming from them, finetuning from them.

A checkpoint is a directory `<model_save_dir>/<model>/<N>/` holding
  model.safetensors       the parameters (batch-norm statistics included)
  optimizer.safetensors   the optimizer's persistable state (momentum velocities); absent when empty
  state.json              counters, LR scheduler, class ids, arguments
and `<model_save_dir>/<model>/latest` is a symbolic link to the newest one.

Writing. Files go to a fresh `.tmp-<N>-<pid>` directory, state.json last, each synced to disk;
the directory is then renamed into place and `latest` is moved by an atomic rename of a new link.
Replacing an existing <N> moves `latest` onto a complete copy before each step (the new one, then
the old one, then <N> again), so `latest` names a complete checkpoint at every instant a process
can be killed; `remove_stale_temporaries` finishes or undoes what a killed save left. Whatever
stands at <N> or `latest` (a symbolic link, a file) is moved aside and deleted as a name, never
written through. Parameters with NaN or infinite values are refused (NonFiniteError), so `latest`
never moves to a diverged network.

Loading never runs code from a file. Our checkpoints are safetensors files (a JSON header and
raw tensor bytes). Paddle's pickle-based `.pdparams`/`.pdopt` files (paddle.save,
paddle.static.save, this project's checkpoints before safetensors) are read by an unpickler
that can only rebuild numpy arrays, dicts, lists and plain values, and refuses anything else.
Paddle 1.x per-variable files are read by Paddle's tensor reader after their header and size
are checked. A damaged or truncated file is a UserError naming it.
"""
import json
import os
import re
import shutil

from utility.errors import UserError

PARAMS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST = "latest"
TMP = ".tmp-"     # a save in progress: .tmp-<N>-<pid>, and the new link .tmp-latest-<pid>
OLD = ".old-"     # the checkpoint being replaced: .old-<N>-<pid>
# What saves before this layout left behind: <N>.old-<pid> and latest.tmp-<pid>.
_LEGACY_LEFTOVER = re.compile(r"^(.+\.old|latest\.tmp)-\d+$")


class NonFiniteError(UserError):
    """The network holds NaN or infinite values: training diverged, nothing was saved."""


# ---------------------------------------------------------------------------------------------
# Saving

def save_checkpoint(program, model_dir, name, state):
    """Save `program`'s persistables and `state` (a JSON-able dict) as model_dir/name; point `latest` at it.

    Raises NonFiniteError (a UserError) without touching model_dir when a parameter or optimizer
    value is NaN or infinite, and UserError naming the path when the disk refuses (read-only, full,
    a file in the way); the temporary directory is removed then.
    """
    import safetensors.numpy

    name = str(name)
    if not name or name in (".", "..") or name.startswith(".") or os.sep in name or name == LATEST:
        raise ValueError(f"bad checkpoint name {name!r}")
    params, slots = program_state(program)
    bad = non_finite_names({**params, **slots})
    if bad:
        raise NonFiniteError(f"not saving checkpoint {name}: {_few(bad)} hold NaN or infinite values "
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
        _fsync_dir(tmp)
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


def program_state(program):
    """({parameter name: array}, {optimizer state name: array}): every persistable of `program`, from the scope."""
    import numpy as np
    import paddle

    scope = paddle.static.global_scope()
    params, slots = {}, {}
    parameter_names = set(program_parameters(program))
    for value in program.list_vars():
        if not value.persistable:
            continue
        var = scope.find_var(value.name)
        if var is None:
            raise RuntimeError(f"{value.name} is not in the scope: run the startup program first")
        array = np.asarray(np.array(var.get_tensor()), order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
        (params if value.name in parameter_names else slots)[value.name] = array
    return params, slots


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
    link = os.path.join(model_dir, LATEST)
    return os.readlink(link) if os.path.islink(link) else None


def _point_latest(model_dir, target):
    link = os.path.join(model_dir, LATEST)
    if os.path.lexists(link) and not os.path.islink(link):
        raise UserError(f"{link} is not the symbolic link train.py keeps there; move it away")
    tmp_link = os.path.join(model_dir, f"{TMP}{LATEST}-{os.getpid()}")
    _remove(tmp_link)
    os.symlink(target, tmp_link)
    os.replace(tmp_link, link)
    _fsync_dir(model_dir)


def _write_file(path, data):
    with open(path, "xb") as f:  # "x": never writes through a file or link already there
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    if os.path.isdir(path) and not _parameter_files(path) and os.path.exists(os.path.join(path, LATEST)):
        path = os.path.join(path, LATEST)
    return os.path.realpath(path)


def _parameter_files(directory):
    """(kind, parameter file, optimizer file or None) of `directory`, or None for per-variable files.

    Ours (model.safetensors) first, then Paddle's (model.pdparams, or a lone *.pdparams),
    then a lone *.safetensors.
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
    found = [f for f in files if f.endswith(".safetensors")]
    if len(found) == 1:
        return "safetensors", os.path.join(directory, found[0]), None
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


def load_checkpoint_state(directory, names=(), with_optimizer=True):
    """Saved tensors (parameters, and optimizer state unless with_optimizer=False) of a checkpoint, by name.

    A directory without a parameter file is read in Paddle 1.x's format of one file per variable
    (`save_persistables`, and PaddleCV's pretrained ImageNet weights): the files of `names`.
    """
    found = _parameter_files(directory)
    if found is None:
        state = _per_variable_files(directory, names)
        if not state:
            raise UserError(f"{directory} holds no parameters (expected {PARAMS_FILE}, a .pdparams file, "
                            "or one file per parameter named like conv1_weights)")
        return state
    kind, params_path, optimizer_path = found
    read = _read_safetensors if kind == "safetensors" else _read_pickled_arrays
    state = read(params_path)
    if with_optimizer and optimizer_path:
        state.update(read(optimizer_path))
    return state


def _read_safetensors(path):
    import safetensors
    import safetensors.numpy

    try:
        return safetensors.numpy.load_file(path)
    except (safetensors.SafetensorError, OSError, ValueError, TypeError) as err:
        raise UserError(f"{path} is damaged or not a safetensors file ({str(err).strip()})") from None


# --- Paddle's pickle files, without pickle's power to run code --------------------------------

class _RefusedGlobal(Exception):
    def __init__(self, module, name):
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


def _allowed_globals():
    """What rebuilding numpy arrays needs, by the names pickles of numpy 1 and 2 use; nothing else."""
    import codecs
    import collections

    import numpy as np

    reconstruct = np.ndarray((0,)).__reduce__()[0]     # numpy's _reconstruct, whatever its module
    scalar = np.float32(0).__reduce__()[0]             # numpy's scalar

    def latin1_encode(text, encoding="latin1", errors="strict"):
        # pickle protocol 2 stores bytes as _codecs.encode(str, 'latin1'): admit that codec only
        if encoding not in ("latin1", "latin-1"):
            raise _RefusedGlobal("_codecs.encode with codec", encoding)
        return codecs.encode(text, "latin1", errors)

    frombuffer = np.ones(1).__reduce_ex__(5)[0]         # numpy's _frombuffer (pickle protocol 5)
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("builtins", "tuple"): tuple,
               ("collections", "OrderedDict"): collections.OrderedDict, ("_codecs", "encode"): latin1_encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = frombuffer
    return allowed


def _read_pickled_arrays(path):
    """{name: array} from a .pdparams/.pdopt pickle, admitting only numpy array reconstruction."""
    import pickle

    import numpy as np

    allowed = _allowed_globals()

    class ArraysOnly(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) not in allowed:
                raise _RefusedGlobal(module, name)
            return allowed[(module, name)]

        def persistent_load(self, pid):
            raise _RefusedGlobal("persistent id", repr(pid)[:40])

    try:
        with open(path, "rb") as f:
            loaded = ArraysOnly(f, encoding="latin1").load()
    except _RefusedGlobal as err:
        raise UserError(f"refusing to load {path}: it asks to run {err.module}.{err.name}, which a parameter "
                        "file never needs (a pickle can run code when loaded; this loader only rebuilds arrays)") \
            from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    except Exception as err:  # truncated or random bytes fail in many ways: EOFError, UnpicklingError, ...
        raise UserError(f"{path} is damaged or not a Paddle parameter file ({type(err).__name__}: {err})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path} is not a Paddle parameter file (it holds a {type(loaded).__name__}, not a dict)")
    loaded = _join_split_tensors(loaded, path)
    arrays = {}
    for key, value in loaded.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
            value = value[1]  # paddle.save of a Tensor: (its name, its array)
        if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
            arrays[str(key)] = value  # leaves out the names table, LR scheduler state, plain numbers
    return arrays


def _join_split_tensors(loaded, path):
    """Paddle splits tensors over 1 GiB into `<name>@@.<i>` slices listed under 'UnpackBigParamInfor@@'."""
    import numpy as np

    info = loaded.pop("UnpackBigParamInfor@@", None)  # typos: disable-line (Paddle's spelling)
    if not info:
        return loaded
    try:
        for key, value in info.items():
            loaded[key] = np.concatenate([loaded.pop(part) for part in value["slices"]]).reshape(value["OriginShape"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UserError(f"{path} is damaged (a split tensor does not join: {err})") from None
    return loaded


# --- Paddle 1.x: one file per variable ---------------------------------------------------------

def _per_variable_files(directory, names):
    state = {}
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            state[name] = _read_paddle1_tensor(path)
    return state


def _read_paddle1_tensor(path):
    """One tensor written by Paddle 1.x's save_vars/save_persistables (core.save_dense_tensor).

    Layout: uint32 version 0, uint64 LoD levels (each a uint64 byte count and its offsets), uint32
    version 0, int32 descriptor size, the descriptor (protobuf: data type, dims), the raw data.
    The header is checked here and the file size against the data it announces, before Paddle
    reads the file: Paddle alone accepts a truncated file, and allocates whatever dims claim.
    """
    import struct

    import numpy as np
    from paddle.base import core

    def damaged(why):
        return UserError(f"{path} is damaged or not a Paddle 1.x parameter file ({why})")

    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)  # the header; the data follows it
            size = os.fstat(f.fileno()).st_size
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        version, levels = struct.unpack_from("<IQ", data, 0)
        pos = 12
        if version != 0 or levels > 8:
            raise damaged("bad header")
        for _ in range(levels):
            (count,) = struct.unpack_from("<Q", data, pos)
            pos += 8 + count
        tensor_version, desc_size = struct.unpack_from("<Ii", data, pos)
        pos += 8
        if tensor_version != 0 or not 0 < desc_size <= len(data) - pos:
            raise damaged("bad tensor header")
        dtype, dims = _tensor_desc(data[pos:pos + desc_size])
    except (struct.error, IndexError, KeyError):
        raise damaged("bad header") from None
    expected = pos + desc_size + int(np.prod(dims, dtype=np.float64)) * dtype.itemsize
    if expected != size or any(d < 0 for d in dims):
        raise damaged(f"{size} bytes where the header announces {expected}")
    tensor = core.DenseTensor()
    try:
        core.load_dense_tensor(tensor, path)
        array = np.array(tensor)
    except (RuntimeError, ValueError, MemoryError) as err:
        raise damaged(str(err).strip().splitlines()[0]) from None
    if array.shape != tuple(dims):
        raise damaged(f"shape {array.shape} where the header announces {tuple(dims)}")
    return array


# Paddle's VarType codes of the data types a parameter file holds
_PADDLE1_DTYPES = {0: "bool", 1: "int16", 2: "int32", 3: "int64", 4: "float16", 5: "float32", 6: "float64",
                   20: "uint8", 21: "int8", 22: "uint16", 23: "complex64", 24: "complex128"}


def _tensor_desc(desc):
    """(numpy dtype, dims) from a TensorDesc protobuf: field 1 the type, field 2 the dims (plain or packed)."""
    import numpy as np

    def varint(pos):
        value = shift = 0
        while True:
            byte = desc[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if byte < 0x80:
                return value, pos
            if shift > 63:
                raise KeyError("varint")

    dtype, dims, pos = None, [], 0
    while pos < len(desc):
        key, pos = varint(pos)
        if key == 0x08:
            dtype, pos = varint(pos)
        elif key == 0x10:
            dim, pos = varint(pos)
            dims.append(dim - (1 << 64) if dim >= 1 << 63 else dim)
        elif key == 0x12:
            length, pos = varint(pos)
            end = pos + length
            while pos < end:
                dim, pos = varint(pos)
                dims.append(dim - (1 << 64) if dim >= 1 << 63 else dim)
        else:
            raise KeyError(key)
    return np.dtype(_PADDLE1_DTYPES[dtype]), dims


# ---------------------------------------------------------------------------------------------
# Loading into a program

def program_parameters(program):
    """{name: shape} of the program's parameters, batch-norm statistics included."""
    return {v.name: tuple(v.shape) for v in program.global_block().all_parameters()}


def restore(program, directory):
    """Load parameters and optimizer state of a checkpoint into `program`, to resume training."""
    expected, state = _fitting_state(program, directory, with_optimizer=True)
    slots = [v.name for v in program.list_vars() if v.persistable and v.name not in expected]
    _set(program, {name: state[name] for name in list(expected) + slots if name in state}, directory)


def load_all_parameters(program, directory):
    """Load every parameter of `program` from a checkpoint (eval, infer); extra tensors are ignored."""
    expected, state = _fitting_state(program, directory, with_optimizer=False)
    _set(program, {name: state[name] for name in expected}, directory)


def _fitting_state(program, directory, with_optimizer):
    """(the program's {name: shape}, the checkpoint's tensors), after checking that every parameter fits."""
    expected = program_parameters(program)
    state = load_checkpoint_state(directory, expected, with_optimizer=with_optimizer)
    missing = sorted(set(expected) - set(state))
    wrong = sorted(f"{n} {tuple(state[n].shape)} -> {expected[n]}" for n in expected
                   if n in state and tuple(state[n].shape) != expected[n])
    if missing or wrong:
        problems = ([f"missing {_few(missing)}"] if missing else []) + \
                   ([f"other shape: {_few(wrong)}"] if wrong else [])
        raise UserError(f"{directory} does not fit this network ({'; '.join(problems)}); "
                        "check --model, --embedding_size, --neck and the training list")
    return expected, state


def _set(program, arrays, directory):
    """Put arrays into the scope tensors of `program`, converting between float widths; shapes must match."""
    import numpy as np
    import paddle

    scope = paddle.static.global_scope()
    converted, wrong = {}, []
    for name, value in arrays.items():
        current = np.array(scope.find_var(name).get_tensor())
        if value.shape != current.shape:
            wrong.append(f"{name} {value.shape} -> {current.shape}")
        elif value.dtype != current.dtype:
            if value.dtype.kind != current.dtype.kind or current.dtype.kind not in "fiu":
                raise UserError(f"{name} in {directory} is {value.dtype}, this network needs {current.dtype}")
            value = value.astype(current.dtype)
        converted[name] = value
    if wrong:
        raise UserError(f"{directory} does not fit this network (other shape: {_few(sorted(wrong))})")
    paddle.static.set_program_state(program, converted)


def load_matching(program, directory, log=print, model=None):
    """Load the parameters whose name and shape match (finetuning); report what was skipped and why.

    `model` (the current --model), when given, is compared with the checkpoint's own, and a
    difference is said in one line. Returns the number of parameters loaded.
    """
    expected = program_parameters(program)
    state = load_checkpoint_state(directory, expected, with_optimizer=False)
    kept, other_shape = {}, []
    for name, shape in expected.items():
        if name in state:
            if tuple(state[name].shape) == shape:
                kept[name] = state[name]
            else:
                other_shape.append(f"{name} {tuple(state[name].shape)} -> {shape}")
    not_in_file = sorted(set(expected) - set(state))
    unused = sorted(n for n in state if n not in expected and not _is_optimizer_slot(n))
    if not kept:
        raise UserError(f"no parameter of this network was found in {directory} "
                        f"(it holds e.g. {_few(sorted(state))}); is --model right?")
    _set(program, kept, directory)
    log(f"Loaded {len(kept)} of {len(expected)} parameters from {directory}")
    trained_as = ((read_state(directory) or {}).get("args") or {}).get("model")
    if model and trained_as and trained_as != model:
        log(f"The checkpoint was trained as {trained_as}; this network is {model}: "
            f"loaded {len(kept)} of {len(expected)}")
    if other_shape:
        log(f"Skipped {len(other_shape)} with another shape: {_few(other_shape)}")
    if not_in_file:
        log(f"Kept the initial value of {len(not_in_file)} not in the file: {_few(not_in_file)}")
    if unused:
        log(f"Ignored {len(unused)} from the file that this network does not have: {_few(unused)}")
    return len(kept)


def _is_optimizer_slot(name):
    return "_velocity_" in name or name.startswith("learning_rate")


def _few(names, count=4):
    shown = ", ".join(names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")
