"""ResNet-18/34/50 backbones (He et al. 2015) with PaddleCV's classic parameter names.

Naming, as in PaddleCV image_classification's ResNet: the stem is `conv1`
(batch norm `bn_conv1`); block `i` (a, b, c, ...) of stage `s` (2..5) is
`res{s}{i}`, its convolutions `res{s}{i}_branch2a`, `_branch2b`, (`_branch2c`)
and its projection shortcut `res{s}{i}_branch1`; the batch norm after
convolution `resXYZ` is `bnXYZ` (e.g. `res2a_branch2a_weights` is normalised by
`bn2a_branch2a_scale/_offset/_mean/_variance`).

The 50-layer net puts the stride on the 3x3 convolution of its bottleneck
("ResNet v1.5"). As in Paddle's published ResNet18/34, the first basic block
of stage 2 has a projection shortcut even though its shape does not change.

`last_stride=1` (as in re-identification baselines) keeps the resolution in the
last stage: its first block strides by 1 instead of 2, so the final feature map
is twice as high and wide; parameter names and shapes are the same, so weights
trained with either stride load into both.

`stem="small"` (for inputs of 32-64 pixels) makes `conv1` a 3x3 stride-1 convolution instead of
7x7 stride 2 (models/layers.py STEMS); the max pool after it stays.
"""
from paddle import nn

from models.layers import STEMS, ConvBN, GlobalAvgPool, block_stride

STAGE_WIDTHS = (64, 128, 256, 512)


def conv_bn(in_channels, out_channels, kernel_size, name, stride=1, relu=True):
    """ConvBN named the ResNet way: convolution `name`, batch norm `bn` + name minus `res`."""
    return ConvBN(in_channels, out_channels, kernel_size, conv_name=name,
                  bn_name="bn" + name[len("res"):], stride=stride, relu=relu)


class BasicBlock(nn.Layer):
    """Two 3x3 convolutions plus a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels, width, stride, name, force_projection=False):
        super().__init__()
        self.conv_a = conv_bn(in_channels, width, 3, f"{name}_branch2a", stride=stride)
        self.conv_b = conv_bn(width, width, 3, f"{name}_branch2b", relu=False)
        self.shortcut = None
        if force_projection or stride != 1 or in_channels != width:
            self.shortcut = conv_bn(in_channels, width, 1, f"{name}_branch1",
                                    stride=stride, relu=False)

    def forward(self, x):
        short = x if self.shortcut is None else self.shortcut(x)
        return nn.functional.relu(self.conv_b(self.conv_a(x)) + short)


class Bottleneck(nn.Layer):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, plus a shortcut (ResNet-50)."""

    expansion = 4

    def __init__(self, in_channels, width, stride, name, force_projection=False):
        super().__init__()
        out_channels = width * self.expansion
        self.conv_a = conv_bn(in_channels, width, 1, f"{name}_branch2a")
        self.conv_b = conv_bn(width, width, 3, f"{name}_branch2b", stride=stride)
        self.conv_c = conv_bn(width, out_channels, 1, f"{name}_branch2c", relu=False)
        self.shortcut = None
        if force_projection or stride != 1 or in_channels != out_channels:
            self.shortcut = conv_bn(in_channels, out_channels, 1, f"{name}_branch1",
                                    stride=stride, relu=False)

    def forward(self, x):
        short = x if self.shortcut is None else self.shortcut(x)
        return nn.functional.relu(self.conv_c(self.conv_b(self.conv_a(x))) + short)


class ResNet(nn.Layer):
    """ResNet trunk: images [N, 3, H, W] -> globally average-pooled features [N, feature_dim]."""

    def __init__(self, block, stage_depths, last_stride=2, stem="imagenet"):
        """`block`: the block class of every stage, or a tuple of one per stage (models/resnet_ibn.py)."""
        super().__init__()
        stage_blocks = block if isinstance(block, tuple) else (block,) * len(stage_depths)
        kernel_size, stride = STEMS[stem]
        self.stem = ConvBN(3, 64, kernel_size, conv_name="conv1", bn_name="bn_conv1", stride=stride)
        self.max_pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
        blocks = []
        in_channels = 64
        for stage, (depth, width, stage_block) in enumerate(zip(stage_depths, STAGE_WIDTHS, stage_blocks)):
            for index in range(depth):
                blocks.append(stage_block(
                    in_channels, width,
                    stride=block_stride(stage, index, len(stage_depths), last_stride),
                    name=f"res{stage + 2}{chr(ord('a') + index)}",
                    force_projection=stage_block is BasicBlock and stage == index == 0))
                in_channels = width * stage_block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.pool = GlobalAvgPool()
        self.feature_dim = in_channels

    def forward(self, images):
        return self.pool(self.blocks(self.max_pool(self.stem(images))))


def resnet18(last_stride=2, stem="imagenet"):
    """ResNet-18 trunk, 512-d features."""
    return ResNet(BasicBlock, (2, 2, 2, 2), last_stride, stem)


def resnet34(last_stride=2, stem="imagenet"):
    """ResNet-34 trunk, 512-d features."""
    return ResNet(BasicBlock, (3, 4, 6, 3), last_stride, stem)


def resnet50(last_stride=2, stem="imagenet"):
    """ResNet-50 trunk, 2048-d features."""
    return ResNet(Bottleneck, (3, 4, 6, 3), last_stride, stem)
