"""MobileNetV3-Large (Howard et al., "Searching for MobileNetV3", ICCV 2019), width multiplier 1.0.

A backbone for fast CPU serving: 0.22 G multiply-adds at 224x224, a nineteenth of ResNet-50's 4.1 G. The network is
the paper's Table 1: a 3x3 stride-2 stem of 16 channels with hard-swish; fifteen inverted-residual
blocks (1x1 expansion, depthwise k x k convolution, optional squeeze-and-excitation, linear 1x1
projection; an identity shortcut when the stride is 1 and the width does not change; the first block
has no expansion, as its expanded width equals its input); a 1x1 convolution to 960 channels with
hard-swish; global average pooling; and a 1x1 convolution to 1280 without batch norm, with hard-swish.
Its 1280-d output is this backbone's feature (the head's classifier is the paper's last 1x1
convolution to k classes; the dropout before it in torchvision's classifier is left out).

Squeeze-and-excitation (models/layers.py) squeezes the expanded width to a quarter, rounded to a
multiple of 8 as in the reference implementation (make_divisible: 72 -> 24), and gates with the hard
sigmoid relu6(x + 3) / 6. Hard-swish is x * relu6(x + 3) / 6.

Names, after PaddleCV image_classification's MobileNetV3: the stem is `conv1` (batch norm `conv1_bn`);
block i (2..16) is `conv{i}` with convolutions `conv{i}_expand`, `conv{i}_depthwise`, `conv{i}_linear`
(each with batch norm `<name>_bn`) and gate `conv{i}_se_sqz` / `_exc` (fully connected; PaddleCV's are
1x1 convolutions `_se_1` / `_se_2`); then `conv_last` (+ `conv_last_bn`) and `last_1x1_conv` (weights
[960, 1280] and an offset, a fully connected layer on the pooled feature). PaddleCV's model differs in two
details, where this one follows the paper and torchvision: its first block has a 1x1 expansion to the same
width, and its 1280-wide layer has no bias.

`last_stride=1` makes the last stride-2 block (conv14, the first at 1/32 of the input) stride by 1;
`stem="small"` makes the stem stride by 1 (same 3x3 kernel, same parameters), so every map is twice
as high and wide, for 32-64 px inputs.
"""
from paddle import nn

from models.layers import STEMS, ConvBN, GlobalAvgPool, SqueezeExcitation, named_linear

# The paper's Table 1, one row per block: kernel, expanded width, output width, SE, activation, stride.
LARGE_BLOCKS = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2),
    (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1),
    (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2),
    (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
)
STEM_WIDTH = 16
LAST_CONV_WIDTH = 960
FEATURE_DIM = 1280
SE_REDUCTION = 4
# The reference implementation's batch-norm epsilon (torchvision's and Paddle's MobileNetV3 keep it), so that
# ImageNet weights trained with it give the same features here.
BN_EPSILON = 1e-3
# The stem's stride by --stem (its kernel stays 3x3): "small" keeps the input's resolution.
STEM_STRIDES = {"imagenet": 2, "small": 1}
assert set(STEM_STRIDES) == set(STEMS)
ACTIVATIONS = {"relu": nn.functional.relu, "hardswish": nn.functional.hardswish}


def make_divisible(value, divisor=8):
    """`value` rounded to the nearest multiple of `divisor` (at least `divisor`), never below 90 % of it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn(in_channels, out_channels, kernel_size, name, stride=1, groups=1):
    """ConvBN named the MobileNetV3 way (convolution `name`, batch norm `name_bn`), without activation."""
    return ConvBN(in_channels, out_channels, kernel_size, conv_name=name, bn_name=f"{name}_bn",
                  stride=stride, groups=groups, relu=False, epsilon=BN_EPSILON)


class InvertedResidual(nn.Layer):
    """[1x1 expand, act,] depthwise k x k (strided), act, [SE,] 1x1 linear projection [+ identity]."""

    def __init__(self, in_channels, kernel_size, expanded, out_channels, use_se, activation, stride, name):
        super().__init__()
        self.activation = ACTIVATIONS[activation]
        self.expand = None
        if expanded != in_channels:
            self.expand = conv_bn(in_channels, expanded, 1, f"{name}_expand")
        self.depthwise = conv_bn(expanded, expanded, kernel_size, f"{name}_depthwise", stride=stride,
                                 groups=expanded)
        self.se = None
        if use_se:
            self.se = SqueezeExcitation(expanded, make_divisible(expanded / SE_REDUCTION), f"{name}_se",
                                        gate=nn.functional.hardsigmoid)
        self.project = conv_bn(expanded, out_channels, 1, f"{name}_linear")
        self.identity = stride == 1 and in_channels == out_channels

    def forward(self, x):
        h = x if self.expand is None else self.activation(self.expand(x))
        h = self.activation(self.depthwise(h))
        if self.se is not None:
            h = self.se(h)
        h = self.project(h)
        return x + h if self.identity else h


class MobileNetV3(nn.Layer):
    """MobileNetV3 trunk: images [N, 3, H, W] -> features [N, 1280] (pooled, then the 1x1 layer to 1280)."""

    def __init__(self, block_rows, last_stride=2, stem="imagenet"):
        super().__init__()
        self.stem = conv_bn(3, STEM_WIDTH, 3, "conv1", stride=STEM_STRIDES[stem])
        last_downsampling = max(i for i, row in enumerate(block_rows) if row[-1] == 2)
        blocks = []
        in_channels = STEM_WIDTH
        for index, (kernel_size, expanded, out_channels, use_se, activation, stride) in enumerate(block_rows):
            if index == last_downsampling:
                stride = last_stride
            blocks.append(InvertedResidual(in_channels, kernel_size, expanded, out_channels, use_se, activation,
                                           stride, name=f"conv{index + 2}"))
            in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.last_conv = conv_bn(in_channels, LAST_CONV_WIDTH, 1, "conv_last")
        self.pool = GlobalAvgPool()
        self.last_1x1_conv = named_linear(LAST_CONV_WIDTH, FEATURE_DIM, "last_1x1_conv")
        self.feature_dim = FEATURE_DIM

    def feature_map(self, images):
        """The last convolution's map [N, 960, H/32, W/32] (H/16 with last_stride=1 or the small stem)."""
        x = nn.functional.hardswish(self.stem(images))
        return nn.functional.hardswish(self.last_conv(self.blocks(x)))

    def forward(self, images):
        return nn.functional.hardswish(self.last_1x1_conv(self.pool(self.feature_map(images))))


def mobilenet_v3_large(last_stride=2, stem="imagenet"):
    """MobileNetV3-Large (width 1.0) trunk, 1280-d features."""
    return MobileNetV3(LARGE_BLOCKS, last_stride, stem)
