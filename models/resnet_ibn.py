"""ResNet-50-IBN-a (Pan et al., ECCV 2018, "Two at Once: Enhancing Learning and Generalization
Capacities via IBN-Net"): the re-identification baselines' standard backbone.

ResNet-50 (models/resnet.py: same trunk, stem, strides and names) in which the first normalisation of
every bottleneck of stages 2-4 (torchvision's layer1..layer3) is split: instance normalisation with a
learned scale and shift on the first half of the channels, batch normalisation on the rest. Stage 5
keeps plain bottlenecks. Instance normalisation removes each image's own contrast and colour
statistics from those channels (appearance invariance); batch normalisation keeps the others
discriminative.

The split follows the authors' released `resnet50_ibn_a` (github.com/XingangPan/IBN-Net,
ibnnet/modules.py): IN on the first int(channels * 0.5) channels, BN on the remaining ones (widths
64/128/256, so exactly half). Their older `resnet50_ibn_a_old`, with which the paper's ImageNet figures
were measured, put BN first and IN second; the released weights and the ReID baselines use the former.
The stride is on the 3x3 convolution, as in the authors' model.

Names: the batch-norm half keeps the ResNet name `bn{s}{i}_branch2a_*` (with half the channels); the
instance-norm half is `in{s}{i}_branch2a_scale` / `_offset` (no running statistics: it always
normalises with the image's own). The parameter count equals ResNet-50's, as IN's scale and shift
replace BN's one for one.
"""
import paddle
from paddle import ParamAttr, nn

from models.resnet import Bottleneck, ResNet, conv_bn

IBN_STAGES = 3  # stages 2-4 of 5 (layer1..layer3) get IBN bottlenecks; stage 5 stays plain


class InstanceBatchNorm(nn.Layer):
    """[N, C, H, W] -> instance norm (affine) of the first C // 2 channels, batch norm of the rest, concatenated."""

    def __init__(self, channels, in_name, bn_name):
        super().__init__()
        self.split = (channels // 2, channels - channels // 2)
        self.instance_norm = nn.InstanceNorm2D(
            self.split[0], weight_attr=ParamAttr(name=f"{in_name}_scale"),
            bias_attr=ParamAttr(name=f"{in_name}_offset"))
        self.batch_norm = nn.BatchNorm2D(
            self.split[1], name=bn_name, weight_attr=ParamAttr(name=f"{bn_name}_scale"),
            bias_attr=ParamAttr(name=f"{bn_name}_offset"))

    def forward(self, x):
        instance_part, batch_part = paddle.split(x, self.split, axis=1)
        return paddle.concat([self.instance_norm(instance_part), self.batch_norm(batch_part)], axis=1)


class ConvIBN(nn.Layer):
    """1x1 convolution `{name}_weights` without bias, InstanceBatchNorm, ReLU."""

    def __init__(self, in_channels, out_channels, name):
        super().__init__()
        self.conv = nn.Conv2D(in_channels, out_channels, 1, weight_attr=ParamAttr(name=f"{name}_weights"),
                              bias_attr=False)
        suffix = name[len("res"):]
        self.norm = InstanceBatchNorm(out_channels, in_name="in" + suffix, bn_name="bn" + suffix)

    def forward(self, x):
        return nn.functional.relu(self.norm(self.conv(x)))


class IBNBottleneck(nn.Layer):
    """ResNet's Bottleneck with the first normalisation split into instance and batch norm."""

    expansion = Bottleneck.expansion

    def __init__(self, in_channels, width, stride, name, force_projection=False):
        super().__init__()
        out_channels = width * self.expansion
        self.conv_a = ConvIBN(in_channels, width, f"{name}_branch2a")
        self.conv_b = conv_bn(width, width, 3, f"{name}_branch2b", stride=stride)
        self.conv_c = conv_bn(width, out_channels, 1, f"{name}_branch2c", relu=False)
        self.shortcut = None
        if force_projection or stride != 1 or in_channels != out_channels:
            self.shortcut = conv_bn(in_channels, out_channels, 1, f"{name}_branch1", stride=stride, relu=False)

    def forward(self, x):
        short = x if self.shortcut is None else self.shortcut(x)
        return nn.functional.relu(self.conv_c(self.conv_b(self.conv_a(x))) + short)


def resnet50_ibn_a(last_stride=2, stem="imagenet"):
    """ResNet-50-IBN-a trunk, 2048-d features; last_stride and stem as for ResNet-50."""
    stage_blocks = (IBNBottleneck,) * IBN_STAGES + (Bottleneck,)
    return ResNet(stage_blocks, (3, 4, 6, 3), last_stride, stem)
