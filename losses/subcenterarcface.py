"""Sub-center ArcFace (Deng et al., ECCV 2020): ArcFace with k sub-centres per class, the nearest one counting."""
from dataclasses import dataclass

import paddle

from losses.arcmarginloss import ArcMarginParams, arcmargin_loss
from losses.cosine_classifier import CosineClassifier
from losses.registry import LossSpec, require, setting

_ARC = ArcMarginParams()  # the margin and scale start from arcmargin's defaults


@dataclass(frozen=True)
class SubCenterArcFaceParams:
    """The settings of subcenterarcface (flags --subcenter_*; the paper's K, and ArcFace's s and m)."""
    sub_centers: int = setting(3, "subcenter_k", "sub-centres K per class; a class's cosine is its nearest one's")
    scale: float = setting(_ARC.scale, "subcenter_scale", "scale s of the cosine logits")
    margin: float = setting(_ARC.margin, "subcenter_margin", "additive angular margin m (radians)")

    def __post_init__(self):
        require(self, "positive", "sub_centers", "scale")
        require(self, "0 or more", "margin")


def nearest_sub_center(cosine, num_classes, sub_centers):
    """Per class, the largest of its `sub_centers` cosines: [B, C * K] -> [B, C] (class c's sub-centres are
    columns c * K ... c * K + K - 1). The gradient goes to the chosen sub-centre only; the pick is
    argmax + take_along_axis because Paddle 3.3's CPU max gradient is slow (losses/common.py, _pick)."""
    grouped = paddle.reshape(cosine, [-1, num_classes, sub_centers])
    nearest = paddle.take_along_axis(grouped, paddle.argmax(grouped, axis=2, keepdim=True), axis=2)
    return paddle.squeeze(nearest, axis=2)


class SubCenterArcFaceLoss(CosineClassifier):
    """Sub-center ArcFace head: a weight [embedding_dim, num_classes * sub_centers], named
    "subcenterarcface_weights" in static Programs; the arc-margin loss (losses/arcmarginloss.py) of the
    cosine between each L2-normalised embedding and its nearest sub-centre of every class."""

    def __init__(self, embedding_dim, num_classes, *, sub_centers, scale, margin):
        super().__init__(embedding_dim, num_classes * sub_centers, "subcenterarcface_weights")
        self.num_classes, self.sub_centers, self.scale, self.margin = num_classes, sub_centers, scale, margin

    def forward(self, embedding, labels):
        cosine = nearest_sub_center(self.cosine(embedding), self.num_classes, self.sub_centers)
        return arcmargin_loss(cosine, labels, margin=self.margin, scale=self.scale, easy_margin=False)


SPEC = LossSpec(
    name="subcenterarcface", layout="shuffle", classifies=True, params=SubCenterArcFaceParams,
    make=lambda params, embedding_dim, num_classes: SubCenterArcFaceLoss(
        embedding_dim, num_classes, sub_centers=params.sub_centers, scale=params.scale, margin=params.margin),
    summary="sub-center ArcFace: K sub-centres per class, the nearest one takes the additive angular margin")
