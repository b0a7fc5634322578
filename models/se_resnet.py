"""SE-ResNet-50 (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018).

ResNet-50 (models/resnet.py: same trunk, stem, strides and names) whose bottlenecks rescale the
channels of their residual branch, after its last batch norm and before the addition, by a
squeeze-and-excitation gate with reduction 16 (models/layers.py SqueezeExcitation). About 10 % more
parameters than ResNet-50 for almost no extra computation. As in torchvision-style ResNets (and timm's
seresnet50) the stride is on the 3x3 convolution; SENet's released Caffe model put it on the first 1x1
convolution, which changes no parameter.

Names: ResNet-50's, plus the gate of block `res{s}{i}` as `fc_res{s}{i}_sqz_weights` / `_offset` and
`fc_res{s}{i}_exc_weights` / `_offset` (PaddleCV's SE_ResNet_vd names its gates `fc_` + block name).
"""
from paddle import nn

from models.layers import SqueezeExcitation
from models.resnet import Bottleneck, ResNet

SE_REDUCTION = 16


class SEBottleneck(Bottleneck):
    """ResNet-50's bottleneck with an SE gate on its residual branch, before the addition."""

    def __init__(self, in_channels, width, stride, name, force_projection=False):
        super().__init__(in_channels, width, stride, name, force_projection)
        out_channels = width * self.expansion
        self.se = SqueezeExcitation(out_channels, out_channels // SE_REDUCTION, f"fc_{name}")

    def forward(self, x):
        short = x if self.shortcut is None else self.shortcut(x)
        return nn.functional.relu(self.se(self.conv_c(self.conv_b(self.conv_a(x)))) + short)


def se_resnet50(last_stride=2, stem="imagenet"):
    """SE-ResNet-50 trunk, 2048-d features; last_stride and stem as for ResNet-50."""
    return ResNet(SEBottleneck, (3, 4, 6, 3), last_stride, stem)
