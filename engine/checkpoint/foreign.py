"""Reading parameters in every format a checkpoint folder may hold, without running code from a file.

Our checkpoints are safetensors files (a JSON header and raw tensor bytes; storage.py). Paddle's
pickle-based `.pdparams`/`.pdopt` files (paddle.save, paddle.static.save, this project's checkpoints
before safetensors) are read by an unpickler that can only rebuild numpy arrays, dicts, lists and
plain values, and refuses anything else. Paddle 1.x per-variable files are read by Paddle's tensor
reader after their header and size are checked. A damaged or truncated file is a UserError naming it.
"""
import os

from engine.checkpoint import storage
from utility.errors import UserError


def load_checkpoint_state(directory, names=(), with_optimizer=True):
    """Saved tensors (parameters, and optimizer state unless with_optimizer=False) of a checkpoint, by name.

    A directory without a parameter file is read in Paddle 1.x's format of one file per variable
    (`save_persistables`, and PaddleCV's pretrained ImageNet weights): the files of `names`.
    """
    found = storage.parameter_files(directory)
    if found is None:
        state = _per_variable_files(directory, names)
        if not state:
            raise UserError(f"{directory} holds no parameters (expected {storage.PARAMS_FILE}, a .pdparams file, "
                            "or one file per parameter named like conv1_weights)")
        return state
    kind, params_path, optimizer_path = found
    read = storage.read_safetensors if kind == "safetensors" else read_pickled_arrays
    state = read(params_path)
    if with_optimizer and optimizer_path:
        state.update(read(optimizer_path))
    return state


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


def read_pickled_arrays(path):
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
