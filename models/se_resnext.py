"""SE-ResNeXt-50 32x4d backbone (Xie et al. 2017; Hu et al. 2018) with PaddleCV's classic names.

ResNeXt bottlenecks with 32 groups of 4 channels in the first stage (the
grouped 3x3 convolution carries the stride), each followed by
squeeze-and-excitation with reduction 16.

Naming, as in PaddleCV image_classification's SE_ResNeXt: the stem is `conv1`
(batch norm `conv1_bn`); block `i` (1, 2, ...) of stage `s` (2..5) has
convolutions `conv{s}_{i}_x1`, `_x2`, `_x3`, projection shortcut
`conv{s}_{i}_prj`, each with batch norm `<conv name>_bn`, and
squeeze/excitation layers `fc{s}_{i}_sqz` / `fc{s}_{i}_exc`.

`last_stride=1` makes the first block of stage 5 stride by 1 (same parameters); `stem="small"`
makes `conv1` a 3x3 stride-1 convolution (models/layers.py STEMS).
"""
from paddle import nn

from models.layers import STEMS, ConvBN, GlobalAvgPool, SqueezeExcitation, block_stride

CARDINALITY = 32
SE_REDUCTION = 16
STAGE_DEPTHS = (3, 4, 6, 3)
STAGE_WIDTHS = (128, 256, 512, 1024)  # grouped-convolution width; blocks output twice this


def conv_bn(in_channels, out_channels, kernel_size, name, stride=1, groups=1, relu=True):
    """ConvBN named the SE-ResNeXt way: convolution `name`, batch norm `name_bn`."""
    return ConvBN(in_channels, out_channels, kernel_size, conv_name=name, bn_name=f"{name}_bn",
                  stride=stride, groups=groups, relu=relu)


class SEResNeXtBottleneck(nn.Layer):
    """1x1 reduce, grouped 3x3 (strided), 1x1 expand by 2, SE gate, plus a shortcut."""

    def __init__(self, in_channels, width, stride, name):
        super().__init__()
        out_channels = width * 2
        self.conv_x1 = conv_bn(in_channels, width, 1, f"conv{name}_x1")
        self.conv_x2 = conv_bn(width, width, 3, f"conv{name}_x2", stride=stride,
                               groups=CARDINALITY)
        self.conv_x3 = conv_bn(width, out_channels, 1, f"conv{name}_x3", relu=False)
        self.se = SqueezeExcitation(out_channels, out_channels // SE_REDUCTION, f"fc{name}")
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv_bn(in_channels, out_channels, 1, f"conv{name}_prj",
                                    stride=stride, relu=False)

    def forward(self, x):
        short = x if self.shortcut is None else self.shortcut(x)
        residual = self.se(self.conv_x3(self.conv_x2(self.conv_x1(x))))
        return nn.functional.relu(residual + short)


class SEResNeXt(nn.Layer):
    """SE-ResNeXt trunk: images [N, 3, H, W] -> globally average-pooled features [N, 2048]."""

    def __init__(self, last_stride=2, stem="imagenet"):
        super().__init__()
        kernel_size, stride = STEMS[stem]
        self.stem = conv_bn(3, 64, kernel_size, "conv1", stride=stride)
        self.max_pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
        blocks = []
        in_channels = 64
        for stage, (depth, width) in enumerate(zip(STAGE_DEPTHS, STAGE_WIDTHS)):
            for index in range(depth):
                blocks.append(SEResNeXtBottleneck(
                    in_channels, width,
                    stride=block_stride(stage, index, len(STAGE_DEPTHS), last_stride),
                    name=f"{stage + 2}_{index + 1}"))
                in_channels = width * 2
        self.blocks = nn.Sequential(*blocks)
        self.pool = GlobalAvgPool()
        self.feature_dim = in_channels

    def forward(self, images):
        return self.pool(self.blocks(self.max_pool(self.stem(images))))


def se_resnext50_32x4d(last_stride=2, stem="imagenet"):
    """SE-ResNeXt-50 (32x4d) trunk, 2048-d features; last_stride=1 keeps the last stage's resolution."""
    return SEResNeXt(last_stride, stem)
