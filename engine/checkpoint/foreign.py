"""Reading parameters in every format a checkpoint folder or file may hold, without running code from a file.

Our checkpoints are safetensors files (a JSON header and raw tensor bytes; storage.py). Paddle's
pickle-based `.pdparams`/`.pdopt` files (paddle.save, paddle.static.save, this project's checkpoints
before safetensors) are read by an unpickler that can only rebuild numpy arrays, dicts, lists and
plain values, and refuses anything else. torch's `.pth` files (a zip archive: a pickle and one raw
file per storage) are read by the same unpickler, which admits for them torch's tensor rebuilder and
storage types only, both played by numpy code here (torch is not needed). Paddle 1.x per-variable
files are read by Paddle's tensor reader after their header and size are checked. A damaged or
truncated file is a UserError naming it. ImageNet weights named the torchvision/timm or PaddleClas way
are renamed to our parameter names (imagenet.py).
"""
import os

from engine.checkpoint import imagenet, storage
from utility.errors import UserError


def load_checkpoint_state(directory, names=(), with_optimizer=True):
    """Saved tensors (parameters, and optimizer state unless with_optimizer=False) of a checkpoint, by name.

    `directory` may also be one parameter file (read_parameter_file). A directory without a parameter file
    is read in Paddle 1.x's format of one file per variable (`save_persistables`, and PaddleCV's pretrained
    ImageNet weights): the files of `names`. torchvision/timm and PaddleClas ResNet weights come back under
    our names, checked against `names` when it is a {name: shape} dict (imagenet.to_our_names).
    """
    if os.path.isfile(directory):
        return imagenet.to_our_names(read_parameter_file(directory), directory, _shapes(names))
    found = storage.parameter_files(directory)
    if found is None:
        state = _per_variable_files(directory, names)
        if not state:
            raise UserError(f"{directory} holds no parameters (expected {storage.PARAMS_FILE}, one .pdparams, "
                            ".safetensors or .pth file, or one file per parameter named like conv1_weights)")
        return state
    kind, params_path, optimizer_path = found
    read = {"safetensors": storage.read_safetensors, "pickle": read_pickled_arrays, "torch": read_torch_zip}[kind]
    state = imagenet.to_our_names(read(params_path), params_path, _shapes(names))
    if with_optimizer and optimizer_path:
        state.update(read(optimizer_path))
    return state


def _shapes(names):
    return names if isinstance(names, dict) else None


# the first bytes of torch.save's format before torch 1.6: a pickled magic number (0x1950a86a20f9469cfc6c)
_TORCH_LEGACY_START = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def read_parameter_file(path):
    """{name: array} of one file, by what its first bytes say: a zip archive (torch.save), a safetensors file
    (an 8-byte header size, then the JSON header), or a pickle (Paddle's .pdparams)."""
    try:
        with open(path, "rb") as f:
            start = f.read(len(_TORCH_LEGACY_START))
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    if start.startswith(b"PK\x03\x04"):
        return read_torch_zip(path)
    if start[8:9] == b"{":
        return storage.read_safetensors(path)
    if start.startswith(_TORCH_LEGACY_START):
        raise UserError(f"{path} is in torch's format before torch 1.6, which this toolkit does not read; "
                        "re-save it with a recent torch.save (a zip archive) or convert it to .safetensors")
    if start.startswith(b"\x80"):
        return read_pickled_arrays(path)
    raise UserError(f"{path} is no parameter file this toolkit reads (a torch .pth state dict, a .safetensors "
                    "file, a Paddle .pdparams file)")


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


def unpickle_arrays(open_file, path, kind, extra_globals=None, persistent_load=None):
    """The object of the pickle `open_file()` opens, admitting only the globals that rebuild numpy arrays, plus
    `extra_globals` ({(module, name): stand-in}); a persistent id goes to `persistent_load` (else refused).

    Any other global is refused before anything of it runs: a UserError naming `path`, as is damage
    (`kind` names what the file should be, e.g. "a Paddle parameter file").
    """
    import pickle

    allowed = {**_allowed_globals(), **(extra_globals or {})}

    class ArraysOnly(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) not in allowed:
                raise _RefusedGlobal(module, name)
            return allowed[(module, name)]

        def persistent_load(self, pid):
            if persistent_load is None:
                raise _RefusedGlobal("persistent id", repr(pid)[:40])
            return persistent_load(pid)

    try:
        with open_file() as f:
            return ArraysOnly(f, encoding="latin1").load()
    except _RefusedGlobal as err:
        raise UserError(f"refusing to load {path}: it asks to run {err.module}.{err.name}, which a parameter "
                        "file never needs (a pickle can run code when loaded; this loader only rebuilds arrays)") \
            from None
    except UserError:
        raise
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    except Exception as err:  # truncated or random bytes fail in many ways: EOFError, UnpicklingError, ...
        raise UserError(f"{path} is damaged or not {kind} ({type(err).__name__}: {err})") from None


def read_pickled_arrays(path):
    """{name: array} from a .pdparams/.pdopt pickle, admitting only numpy array reconstruction."""
    import functools

    import numpy as np

    loaded = unpickle_arrays(functools.partial(open, path, "rb"), path, "a Paddle parameter file")
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


# --- torch.save's zip archives, without torch ---------------------------------------------------

# torch's storage types (globals a .pth names) -> numpy's type of their elements; bfloat16 is read as 16-bit
# integers and widened to float32 (its upper half)
_TORCH_STORAGES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "u2",
                   "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
                   "ByteStorage": "u1", "BoolStorage": "?"}


class _StorageType(str):
    """Stands for torch's storage type of this name (a global the pickle names) while a .pth is read."""


def read_torch_zip(path):
    """{name: array} of a state dict that torch.save wrote (its zip format, torch 1.6 and later), without torch.

    The archive holds `<prefix>/data.pkl`, a pickle in which every tensor is
    torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]) and every
    storage a persistent id ("storage", storage type, key, device, element count) whose bytes are the file
    `<prefix>/data/<key>` (in the byte order of `<prefix>/byteorder`, little when absent). The unpickler admits
    those globals besides numpy's and plays them with numpy code: nothing of torch runs.
    """
    import zipfile

    import numpy as np

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{path} is damaged or not a torch .pth file ({err})") from None
    with archive:
        members = archive.namelist()
        pickles = [name for name in members if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise UserError(f"{path} is a zip archive but not a torch .pth file (no single <name>/data.pkl in it)")
        prefix = pickles[0][:-len("data.pkl")]
        big_endian = prefix + "byteorder" in members and archive.read(prefix + "byteorder").strip() == b"big"
        storages = {}

        def storage(pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                    and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
                raise ValueError(f"a persistent id that is no tensor storage: {repr(pid)[:60]}")
            _, kind, key, _device, count = pid
            if key not in storages:
                storages[key] = _read_storage(archive, f"{prefix}data/{key}", kind, count, big_endian)
            return storages[key]

        loaded = unpickle_arrays(lambda: archive.open(pickles[0]), path, "a torch .pth file",
                                 _torch_globals(), storage)
    if not isinstance(loaded, dict):
        raise UserError(f"{path} is no state dict (it holds a {type(loaded).__name__}, not a dict of tensors)")
    return {str(key): value for key, value in loaded.items() if isinstance(value, np.ndarray)}


def _read_storage(archive, member, kind, count, big_endian):
    """(the elements of a storage as a 1-d array, whether they are bfloat16)."""
    import numpy as np

    dtype = np.dtype(_TORCH_STORAGES[kind]).newbyteorder(">" if big_endian else "<")
    try:
        stored = archive.getinfo(member).file_size
    except KeyError:
        raise ValueError(f"the storage {member} is missing") from None
    if count < 0 or stored < count * dtype.itemsize:
        raise ValueError(f"the storage {member} holds {stored} bytes, {count} elements of {dtype.itemsize} announced")
    with archive.open(member) as f:
        return np.frombuffer(f.read(count * dtype.itemsize), dtype), kind == "BFloat16Storage"


def _torch_globals():
    """What a state dict's pickle names of torch, each played by numpy code."""
    allowed = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
               ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}
    allowed.update({("torch", name): _StorageType(name) for name in _TORCH_STORAGES})
    return allowed


def _rebuild_tensor(storage, offset, size, stride, *_requires_grad_hooks_metadata):
    """The array of a tensor: `size` elements of `storage` from `offset` on, `stride` elements apart per axis."""
    import math

    import numpy as np

    elements, bfloat16 = storage
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or not all(type(n) is int and n >= 0 for n in (offset, *size, *stride)):
        raise ValueError("a tensor's offset, size or stride is not a count")
    if 0 in size:
        values = np.zeros(size, elements.dtype)
    else:  # as_strided trusts its arguments: the last element must lie inside the storage
        if offset + sum((n - 1) * step for n, step in zip(size, stride)) >= elements.size:
            raise ValueError("a tensor reaches past the end of its storage")
        if math.prod(size) > elements.size - offset:  # only overlapping (expanded) views have more: never parameters
            raise ValueError("a tensor has more elements than its storage")
        values = np.lib.stride_tricks.as_strided(elements[offset:], size,
                                                 [step * elements.itemsize for step in stride]).copy()
    values = values.astype(values.dtype.newbyteorder("="))
    return (values.astype(np.uint32) << 16).view(np.float32) if bfloat16 else values


def _rebuild_parameter(data, *_requires_grad_hooks):
    return data


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
