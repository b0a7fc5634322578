"""ImageNet ResNet weights the way other frameworks save them, made here, and a numpy forward pass of them.

A network is described neutrally (`random_resnet`): a stem and, per stage, blocks of convolution + batch-norm
layers with an optional projection shortcut. From one description come the state dicts under torchvision's /
timm's and PaddleClas's published key names (`torchvision_state`, `paddleclas_state`), the file writers
(`write_pth`: torch.save's zip layout and pickle written opcode by opcode, as torch is no dependency), and
`pooled_features`, an eval-mode forward pass in numpy that knows nothing of any framework's names.
"""
import struct
import zipfile
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

BN_EPSILON = 1e-5
WIDTHS = (64, 128, 256, 512)


def _conv_bn(rng, in_channels, out_channels, kernel, stride):
    """One convolution (He-initialised, no bias) and the batch norm after it, with random running statistics."""
    fan_in = in_channels * kernel ** 2
    he_scale = np.float32(np.sqrt(2 / fan_in))
    weight = rng.standard_normal((out_channels, in_channels, kernel, kernel), np.float32) * he_scale
    return {"weight": weight, "stride": stride,
            "scale": rng.uniform(0.5, 1.5, out_channels).astype(np.float32),
            "offset": rng.uniform(-0.2, 0.2, out_channels).astype(np.float32),
            "mean": rng.uniform(-0.2, 0.2, out_channels).astype(np.float32),
            "variance": rng.uniform(0.5, 1.5, out_channels).astype(np.float32)}


def random_resnet(rng, depths=(2, 2, 2, 2), bottleneck=False, projection_in_first_block=False):
    """{"stem": layer, "stages": [[{"layers": [layer, ...], "shortcut": layer or None}, ...] x 4]}.

    Basic blocks (3x3, 3x3) or bottlenecks (1x1, 3x3 with the stride, 1x1 x4); the first block of stages
    2-4 strides by 2 and projects. `projection_in_first_block`: stage 1's first block projects too (Paddle's
    ResNet-18/34; torchvision's has none there).
    """
    stem = _conv_bn(rng, 3, 64, 7, 2)
    stages, in_channels = [], 64
    for stage, (depth, width) in enumerate(zip(depths, WIDTHS)):
        blocks = []
        for index in range(depth):
            stride = 2 if index == 0 and stage > 0 else 1
            out_channels = width * (4 if bottleneck else 1)
            if bottleneck:
                layers = [_conv_bn(rng, in_channels, width, 1, 1), _conv_bn(rng, width, width, 3, stride),
                          _conv_bn(rng, width, out_channels, 1, 1)]
            else:
                layers = [_conv_bn(rng, in_channels, width, 3, stride), _conv_bn(rng, width, width, 3, 1)]
            projects = stride != 1 or in_channels != out_channels or (index == 0 and projection_in_first_block)
            blocks.append({"layers": layers,
                           "shortcut": _conv_bn(rng, in_channels, out_channels, 1, stride) if projects else None})
            in_channels = out_channels
        stages.append(blocks)
    return {"stem": stem, "stages": stages, "feature_dim": in_channels}


def _classifier(net):
    return np.full((1000, net["feature_dim"]), 0.5, np.float32), np.full(1000, 0.25, np.float32)


def torchvision_state(net):
    """The state dict torchvision's (and timm's) ResNet has for `net`: conv1.weight, bn1.*, layerS.I.convJ.weight,
    layerS.I.bnJ.*, layerS.I.downsample.0.weight / .1.*, fc.weight [1000, C], fc.bias."""
    state = OrderedDict()

    def put(conv, bn, layer):
        state[f"{conv}.weight"] = layer["weight"]
        for ours, theirs in (("scale", "weight"), ("offset", "bias"), ("mean", "running_mean"),
                             ("variance", "running_var")):
            state[f"{bn}.{theirs}"] = layer[ours]
        state[f"{bn}.num_batches_tracked"] = np.array(100, np.int64)

    put("conv1", "bn1", net["stem"])
    for stage, blocks in enumerate(net["stages"], start=1):
        for index, block in enumerate(blocks):
            for number, layer in enumerate(block["layers"], start=1):
                put(f"layer{stage}.{index}.conv{number}", f"layer{stage}.{index}.bn{number}", layer)
            if block["shortcut"] is not None:
                put(f"layer{stage}.{index}.downsample.0", f"layer{stage}.{index}.downsample.1", block["shortcut"])
    state["fc.weight"], state["fc.bias"] = _classifier(net)
    return state


def paddleclas_state(net):
    """The state dict of PaddleClas's ResNet (legendary_models/resnet.py, version "vb"): stem.0.conv.weight,
    stem.0.bn.{weight,bias,_mean,_variance}, blocks.K.convJ.conv.weight / .bn.* with K counted over all stages,
    blocks.K.short.* on every stage's first block, fc.weight [C, 1000], fc.bias."""
    state = OrderedDict()

    def put(prefix, layer):
        state[f"{prefix}.conv.weight"] = layer["weight"]
        for ours, theirs in (("scale", "weight"), ("offset", "bias"), ("mean", "_mean"), ("variance", "_variance")):
            state[f"{prefix}.bn.{theirs}"] = layer[ours]

    put("stem.0", net["stem"])
    blocks = [block for stage in net["stages"] for block in stage]
    for number, block in enumerate(blocks):
        for index, layer in enumerate(block["layers"]):
            put(f"blocks.{number}.conv{index}", layer)
        if block["shortcut"] is not None:
            put(f"blocks.{number}.short", block["shortcut"])
    weight, bias = _classifier(net)
    state["fc.weight"], state["fc.bias"] = weight.T.copy(), bias
    return state


# --- the numpy forward pass (eval mode) --------------------------------------------------------------

def _conv(x, weight, stride):
    kernel = weight.shape[-1]
    pad = (kernel - 1) // 2
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", windows, weight.astype(np.float64), optimize=True)


def _conv_bn_forward(x, layer, relu):
    y = _conv(x, layer["weight"], layer["stride"])
    mean, variance, scale, offset = (layer[key].astype(np.float64)[None, :, None, None]
                                     for key in ("mean", "variance", "scale", "offset"))
    y = (y - mean) / np.sqrt(variance + BN_EPSILON) * scale + offset
    return np.maximum(y, 0) if relu else y


def _max_pool(x):
    """3x3, stride 2, padding 1."""
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(4, 5))


def pooled_features(net, images):
    """[N, C] globally averaged features of `net` for images [N, 3, H, W], in float64."""
    x = _max_pool(_conv_bn_forward(images.astype(np.float64), net["stem"], relu=True))
    for blocks in net["stages"]:
        for block in blocks:
            y = x
            for number, layer in enumerate(block["layers"]):
                y = _conv_bn_forward(y, layer, relu=number < len(block["layers"]) - 1)
            short = x if block["shortcut"] is None else _conv_bn_forward(x, block["shortcut"], relu=False)
            x = np.maximum(y + short, 0)
    return x.mean(axis=(2, 3))


# --- torch.save's zip format, written by hand ----------------------------------------------------------

_STORAGE_TYPES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage"}


def _global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def _text(value):
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value):
    return b"J" + struct.pack("<i", value)


def _ints(values):
    return b"(" + b"".join(_int(v) for v in values) + b"t"


class StorageView(NamedTuple):
    """A tensor as torch keeps it: `shape` elements of the 1-d `storage` from `offset` on, `strides` elements
    apart, in a storage of type `storage_type` (e.g. "BFloat16Storage" for bfloat16 bit patterns as uint16)."""
    storage: np.ndarray
    offset: int
    shape: tuple
    strides: tuple
    storage_type: str


def _as_view(value):
    if isinstance(value, StorageView):
        return value
    contiguous = np.array(value, order="C")  # (np.ascontiguousarray makes a 0-d array 1-d)
    strides = tuple(step // value.itemsize for step in contiguous.strides)
    return StorageView(contiguous.reshape(-1), 0, value.shape, strides, _STORAGE_TYPES[value.dtype])


def _state_dict_pickle(state):
    """(data.pkl's bytes, {storage key: 1-d array}) as torch.save writes a state dict ({name: array or
    StorageView}): an OrderedDict whose tensors are torch._utils._rebuild_tensor_v2(persistent storage id,
    offset, size, stride, requires_grad, hooks)."""
    empty_ordered_dict = _global("collections", "OrderedDict") + b")R"
    out = bytearray(b"\x80\x02" + empty_ordered_dict + b"(")          # PROTO 2, the dict, MARK of its items
    storages = {}
    for key, value in state.items():
        view = _as_view(value)
        storage_key = str(len(storages))
        storages[storage_key] = view.storage
        storage_id = b"(" + _text("storage") + _global("torch", view.storage_type) + _text(storage_key) \
            + _text("cpu") + _int(view.storage.size) + b"t"
        out += _text(key) + _global("torch._utils", "_rebuild_tensor_v2") + b"(" + storage_id + b"Q" \
            + _int(view.offset) + _ints(view.shape) + _ints(view.strides) + b"\x89" + empty_ordered_dict + b"tR"
    out += b"u."                                                        # SETITEMS, STOP
    return bytes(out), storages


def write_pth(path, state, pickle_bytes=None, prefix="resnet18"):
    """`state` as a .pth file in torch's zip layout: <prefix>/data.pkl, <prefix>/data/<key> (raw little-endian),
    byteorder, version; `pickle_bytes` replaces the state dict's pickle (to plant something else)."""
    state_pickle, storages = _state_dict_pickle(state)
    pickle_bytes = state_pickle if pickle_bytes is None else pickle_bytes
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", pickle_bytes)
        archive.writestr(f"{prefix}/byteorder", "little")
        for key, array in storages.items():
            little_endian = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
            archive.writestr(f"{prefix}/data/{key}", little_endian.tobytes())
        archive.writestr(f"{prefix}/version", "3\n")
    return path
