"""Building blocks shared by the backbones, with explicitly named parameters.

Every parameter gets its name from the caller, so the same network has the
same parameter names in every run, in eager mode and in static programs alike
(no unique_name counters), and weights can be loaded by name.
"""
import math

import paddle
from paddle import ParamAttr, nn


class ConvBN(nn.Layer):
    """Convolution without bias, then batch norm, then an optional ReLU.

    Parameters: `{conv_name}_weights`, and `{bn_name}_scale`, `_offset`,
    `_mean`, `_variance` (the last two are the running statistics).
    """

    def __init__(self, in_channels, out_channels, kernel_size, conv_name, bn_name,
                 stride=1, groups=1, relu=True, epsilon=1e-5):
        super().__init__()
        self.conv = nn.Conv2D(
            in_channels, out_channels, kernel_size, stride=stride,
            padding=(kernel_size - 1) // 2, groups=groups,
            weight_attr=ParamAttr(name=f"{conv_name}_weights"), bias_attr=False)
        # BatchNorm2D names its running mean/variance `{name}_mean` / `{name}_variance`.
        self.bn = nn.BatchNorm2D(
            out_channels, epsilon=epsilon, name=bn_name,
            weight_attr=ParamAttr(name=f"{bn_name}_scale"),
            bias_attr=ParamAttr(name=f"{bn_name}_offset"))
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return nn.functional.relu(x) if self.relu else x


def named_linear(in_features, out_features, name, bias=True):
    """Fully connected layer with parameters `{name}_weights` [in, out] and `{name}_offset` (if bias).

    Weights start uniform in +-1/sqrt(in_features), as in the classic Paddle models.
    """
    bound = 1.0 / math.sqrt(in_features)
    return nn.Linear(
        in_features, out_features,
        weight_attr=ParamAttr(name=f"{name}_weights",
                              initializer=nn.initializer.Uniform(-bound, bound)),
        bias_attr=ParamAttr(name=f"{name}_offset") if bias else False)


# The first convolution of a ResNet-style trunk, (kernel size, stride), by --stem (MobileNetV3 keeps its 3x3
# kernel and takes only the stride: models/mobilenet_v3.py STEM_STRIDES). Both are followed by the 3x3
# stride-2 max pool. "small" keeps the input's resolution in the first convolution, so every stage
# sees maps twice as high and wide (4x the compute): at 32x32 the ImageNet stem leaves 8x8 maps to
# the first stage, too coarse for thin strokes (Omniglot: bench/results/omniglot-tuning.jsonl).
STEMS = {"imagenet": (7, 2), "small": (3, 1)}


def block_stride(stage, index, num_stages, last_stride=2):
    """Stride of block `index` (0-based) of `stage` (0-based) in a four-stage trunk.

    The first block of every stage but the first halves the resolution, the last
    stage's by `last_stride` (1 keeps the resolution there); every other block strides by 1.
    """
    if index > 0 or stage == 0:
        return 1
    return last_stride if stage == num_stages - 1 else 2


class GlobalAvgPool(nn.Layer):
    """Average over the spatial dimensions: [N, C, H, W] -> [N, C], for any H, W."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2D(1)

    def forward(self, x):
        return paddle.flatten(self.pool(x), start_axis=1)


GEM_P = 3.0      # the usual start of the learned exponent (the GeM paper's)
GEM_EPS = 1e-6


class GeneralizedMeanPool(nn.Layer):
    """Generalized mean over the spatial dimensions, (mean of x^p)^(1/p): [N, C, H, W] -> [N, C] (GeM,
    Radenovic et al. 2018, the pooling of image retrieval and re-identification systems).

    p = 1 is the average, larger p leans towards the maximum, so a small strong activation (a dot, a
    short stroke, a logo) is not averaged away over the map. p is learned, one scalar `gem_p` starting
    at GEM_P; activations are clipped at GEM_EPS first (they follow a ReLU, and 0^p has no gradient in p).
    """

    def __init__(self, p=None):
        super().__init__()
        self.p = self.create_parameter([1], attr=ParamAttr(name="gem_p"),
                                       default_initializer=nn.initializer.Constant(GEM_P if p is None else p))

    def forward(self, x):
        pooled = paddle.clip(x, min=GEM_EPS).pow(self.p).mean(axis=[2, 3])
        return pooled.pow(1.0 / self.p)


POOLINGS = {"avg": GlobalAvgPool, "gem": GeneralizedMeanPool}  # --pooling: every trunk pools through its `.pool`


class SqueezeExcitation(nn.Layer):
    """Rescale each channel by a gate computed from the globally pooled input (Hu et al. 2018).

    pooled [N, C] -> `{name}_sqz` (C -> squeezed_channels) -> ReLU -> `{name}_exc` (-> C) -> gate,
    both fully connected layers with a bias. `gate` is the sigmoid of SENet, or the hard sigmoid
    of MobileNetV3.
    """

    def __init__(self, channels, squeezed_channels, name, gate=nn.functional.sigmoid):
        super().__init__()
        self.pool = GlobalAvgPool()
        self.squeeze = named_linear(channels, squeezed_channels, f"{name}_sqz")
        self.excite = named_linear(squeezed_channels, channels, f"{name}_exc")
        self.gate = gate

    def forward(self, x):
        hidden = nn.functional.relu(self.squeeze(self.pool(x)))
        return x * self.gate(self.excite(hidden)).unsqueeze([2, 3])
