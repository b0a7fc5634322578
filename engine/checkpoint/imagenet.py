"""ImageNet ResNet weights as torchvision, timm and PaddleClas publish them, under this toolkit's parameter names.

Two naming conventions are recognised by their keys:
  torchvision and timm (and paddle.vision):  conv1.weight, bn1.*, layer{1-4}.{i}.conv{1-3}.weight and .bn{1-3}.*,
                                             the projection layer{1-4}.{i}.downsample.0.weight and .downsample.1.*,
                                             the classifier fc.*
  PaddleClas (legendary_models ResNet):      stem.0.conv.weight, stem.0.bn.*, blocks.{k}.conv{0-2}.conv.weight
                                             and .bn.*, the projection blocks.{k}.short.conv.weight and .bn.*,
                                             fc.*  (k counts over all stages; every stage's first block has `short`)
They are renamed to models/resnet.py's names (conv1_weights, bn_conv1_scale, res2a_branch2a_weights, ...).
The layouts agree: convolutions are [out, in, kh, kw] in all of them, batch norm has a scale, an offset and
the running mean and variance (epsilon 1e-5 in all of them), and the 50-layer nets stride in their 3x3
convolution. The classifier (fc) and torch's num_batches_tracked counters are dropped.

torchvision's and timm's ResNet-18/34 have no projection in their first block, where ours (like Paddle's) has
one: it is set to the identity (a 1x1 identity convolution and a batch norm that passes values through), so
that the network computes what theirs computes.
"""
import re

from utility.errors import UserError

TORCHVISION, PADDLECLAS = "torchvision/timm", "PaddleClas"

# batch-norm tensor names -> ours (torch: weight, bias, running_*; Paddle: weight, bias, _mean, _variance)
_BN_SUFFIXES = {"weight": "scale", "bias": "offset", "running_mean": "mean", "running_var": "variance",
                "_mean": "mean", "_variance": "variance"}
_DROPPED = re.compile(r"fc\.(weight|bias)|.*num_batches_tracked")
_TORCH_KEY = re.compile(r"(?:(?P<stem>conv1|bn1)|layer(?P<stage>[1-4])\.(?P<index>\d+)\."
                        r"(?:(?P<layer>conv|bn)(?P<branch>[1-3])|downsample\.(?P<short>[01])))\.(?P<tensor>\w+)")
_PADDLECLAS_KEY = re.compile(r"(?:stem\.0|blocks\.(?P<block>\d+)\.(?P<branch>conv[0-2]|short))\.(?P<layer>conv|bn)"
                             r"\.(?P<tensor>\w+)")
_BRANCHES = "abc"   # the block's convolutions in order: branch2a, 2b, 2c
# the backbone's own names in models/resnet.py (the head's names are in models/head.py)
_RESNET_NAME = re.compile(r"conv1_weights|bn_conv1_\w+|(res|bn)\d+[a-z]+_branch\w+")
_KNOWN = {("basic", (2, 2, 2, 2)): "ResNet-18", ("basic", (3, 4, 6, 3)): "ResNet-34",
          ("bottleneck", (3, 4, 6, 3)): "ResNet-50", ("bottleneck", (3, 4, 23, 3)): "ResNet-101",
          ("bottleneck", (3, 8, 36, 3)): "ResNet-152"}
BN_EPSILON = 1e-5   # Paddle's batch-norm default, which models/layers.py's ConvBN keeps


def convention(state):
    """TORCHVISION or PADDLECLAS when `state`'s keys are an ImageNet ResNet of that convention, else None."""
    if "layer1.0.conv1.weight" in state:
        return TORCHVISION
    if "blocks.0.conv0.conv.weight" in state:
        return PADDLECLAS
    return None


def to_our_names(state, source, expected=None):
    """`state` renamed to our parameter names when it is torchvision/timm or PaddleClas ResNet weights, else as is.

    `expected` ({name: shape} of the network to load into), when given, is checked (_fit): a tensor with no place
    in it or of another shape, or a backbone parameter the file lacks, is a UserError naming the first one.
    """
    found = convention(state)
    if found is None:
        return state
    renamed, origin, kind, depths = _rename(state, found, source)
    described = f"{found} {_KNOWN.get((kind, depths), f'ResNet of {kind} blocks {_depths(depths)}')} weights"
    if kind == "basic" and "res2a_branch1_weights" not in renamed:
        channels = renamed["res2a_branch2a_weights"].shape[1]
        renamed.update(identity_projection("res2a_branch1", channels, renamed["res2a_branch2a_weights"].dtype))
        origin.update({name: "(none: the identity)" for name in renamed if name not in origin})
    return _fit(renamed, origin, expected, f"{source} ({described})") if expected else renamed


def identity_projection(conv, channels, dtype):
    """A 1x1 convolution `conv` and its batch norm that together pass [N, channels, H, W] through unchanged."""
    import numpy as np

    bn = _bn_name(conv)
    return {f"{conv}_weights": np.eye(channels, dtype=dtype).reshape(channels, channels, 1, 1),
            f"{bn}_scale": np.full(channels, np.sqrt(1 + BN_EPSILON), dtype),
            f"{bn}_offset": np.zeros(channels, dtype), f"{bn}_mean": np.zeros(channels, dtype),
            f"{bn}_variance": np.ones(channels, dtype)}


def _rename(state, found, source):
    """({our name: array}, {our name: the file's key}, "basic" or "bottleneck", blocks per stage)."""
    parse = _torch_key if found == TORCHVISION else _paddleclas_key
    first_blocks = sorted(int(key.split(".")[1]) for key in state
                          if re.fullmatch(r"blocks\.\d+\.short\.conv\.weight", key))
    if found == PADDLECLAS and (not first_blocks or first_blocks[0] != 0 or len(first_blocks) > 4):
        raise UserError(f"{source} looks like PaddleClas ResNet weights, but its blocks with a projection (`short`) "
                        "do not start its four stages")
    renamed, origin = {}, {}
    for key, array in state.items():
        if _DROPPED.fullmatch(key):
            continue
        place = parse(key, first_blocks)
        if place is None:
            raise UserError(f"{source} looks like {found} ResNet weights but holds {key}, which a plain "
                            f"{found} ResNet-18/34/50 does not have (a variant: deep stem, ResNet-D, SE blocks?); "
                            "only plain ResNets convert")
        conv, layer, tensor = place
        if layer == "conv" and tensor == "weight":
            name = f"{conv}_weights"
        elif layer == "bn" and tensor in _BN_SUFFIXES:
            name = f"{_bn_name(conv)}_{_BN_SUFFIXES[tensor]}"
        else:
            raise UserError(f"{source}: {key} is no tensor of a convolution without bias or of a batch norm")
        renamed[name], origin[name] = array, key
    kind = "bottleneck" if any(name.endswith("_branch2c_weights") for name in renamed) else "basic"
    blocks = {match.groups() for match in map(re.compile(r"res(\d)([a-z]+)_").match, renamed) if match}
    depths = tuple(sum(1 for stage, _ in blocks if stage == str(s)) for s in range(2, 6))
    return renamed, origin, kind, depths


def _bn_name(conv):
    """The batch norm after convolution `conv` (models/resnet.py): bn_conv1, and bn2a_branch2a after res2a_branch2a."""
    return "bn_conv1" if conv == "conv1" else "bn" + conv[len("res"):]


def _torch_key(key, first_blocks):
    """(our convolution's name, "conv" or "bn", the tensor's name) of a torchvision/timm key, or None."""
    match = _TORCH_KEY.fullmatch(key)
    if not match:
        return None
    if match["stem"]:
        return "conv1", "conv" if match["stem"] == "conv1" else "bn", match["tensor"]
    block = _block_name(int(match["stage"]) - 1, int(match["index"]))
    if match["short"]:
        return f"{block}_branch1", "conv" if match["short"] == "0" else "bn", match["tensor"]
    return f"{block}_branch2{_BRANCHES[int(match['branch']) - 1]}", match["layer"], match["tensor"]


def _paddleclas_key(key, first_blocks):
    """The same for a PaddleClas key: its running block number is split into stages at the blocks with `short`."""
    match = _PADDLECLAS_KEY.fullmatch(key)
    if not match:
        return None
    if match["block"] is None:
        return "conv1", match["layer"], match["tensor"]
    number = int(match["block"])
    stage = sum(1 for first in first_blocks if first <= number) - 1
    block = _block_name(stage, number - first_blocks[stage])
    branch = "branch1" if match["branch"] == "short" else f"branch2{_BRANCHES[int(match['branch'][-1])]}"
    return f"{block}_{branch}", match["layer"], match["tensor"]


def _block_name(stage, index):
    """models/resnet.py's name of block `index` of `stage` (both 0-based): res2a, res2b, ..., res5c."""
    return f"res{stage + 2}{chr(ord('a') + index)}"


def _depths(depths):
    return "-".join(map(str, depths))


def _fit(renamed, origin, expected, described):
    """`renamed` checked against the network's {name: shape}: a UserError names the first tensor (in the file's
    order) that has no place in it or another shape, or the first backbone parameter the file does not hold.

    Only the stem convolution may differ in its kernel size (--stem small): it is left out, and the
    finetuning loader keeps its initial value and says so.
    """
    for name, array in renamed.items():
        if name not in expected:
            raise UserError(f"{described} do not fit this network: the file's {origin[name]} {tuple(array.shape)} "
                            f"would be {name}, which this network does not have; check --model")
        if tuple(array.shape) != tuple(expected[name]) and not _other_stem(name, array.shape, expected[name]):
            raise UserError(f"{described} do not fit this network: the file's {origin[name]} is "
                            f"{tuple(array.shape)}, this network's {name} is {tuple(expected[name])}; check --model")
    missing = [name for name in expected if _RESNET_NAME.fullmatch(name) and name not in renamed]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{described} do not fit this network: this network's {missing[0]}{more} is not in the "
                        "file; check --model")
    return {name: array for name, array in renamed.items() if tuple(array.shape) == tuple(expected[name])}


def _other_stem(name, shape, expected_shape):
    return name == "conv1_weights" and tuple(shape[:2]) == tuple(expected_shape[:2])
