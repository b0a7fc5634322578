"""Additive angular margin softmax (ArcFace): a cosine classifier head with its own weight."""
import math
from dataclasses import asdict, dataclass

import paddle
import paddle.nn.functional as F

from losses.common import cross_entropy
from losses.cosine_classifier import CosineClassifier
from losses.registry import LossSpec, require, setting


@dataclass(frozen=True)
class ArcMarginParams:
    """The settings of arcmargin (flags --arc_*)."""
    scale: float = setting(80.0, "arc_scale", "scale s of the cosine logits")
    margin: float = setting(0.15, "arc_margin", "additive angular margin m (radians)")
    easy_margin: bool = setting(False, "arc_easy_margin", "apply the margin only where cos > 0")

    def __post_init__(self):
        require(self, "positive", "scale")
        require(self, "0 or more", "margin")


def arcmargin_loss(cosine, labels, *, margin, scale, easy_margin):
    """Mean cross-entropy of the arc-margin logits built from `cosine` [B, C] and `labels` [B].

    The target class logit cos(theta) becomes cos(theta + margin); where theta + margin would
    pass pi (cos(theta) <= cos(pi - margin)) it becomes cos(theta) - margin * sin(margin), which
    keeps it decreasing in theta. With `easy_margin` the margin applies only where cos(theta) > 0.
    All logits are multiplied by `scale`.
    """
    sine = paddle.sqrt(paddle.clip(1.0 - paddle.square(cosine), min=1e-12))
    with_margin = cosine * math.cos(margin) - sine * math.sin(margin)
    if easy_margin:
        target_logit = paddle.where(cosine > 0.0, with_margin, cosine)
    else:
        fallback = cosine - margin * math.sin(margin)
        target_logit = paddle.where(cosine > math.cos(math.pi - margin), with_margin, fallback)
    is_target = F.one_hot(paddle.reshape(labels, [-1]), cosine.shape[-1]).astype("bool")
    logits = scale * paddle.where(is_target, target_logit, cosine)
    return cross_entropy(logits, labels)


class ArcMarginLoss(CosineClassifier):
    """ArcFace head: owns a weight [embedding_dim, num_classes], named `weight_name` in static Programs.

    Calling it with (embedding [B, D], labels [B]) returns the mean arc-margin loss of the
    cosines between L2-normalised embeddings and L2-normalised weight columns.
    """

    def __init__(self, embedding_dim, num_classes, *, margin, scale, easy_margin,
                 weight_name="arcmargin_weights"):
        super().__init__(embedding_dim, num_classes, weight_name)
        self.margin, self.scale, self.easy_margin = margin, scale, easy_margin

    def forward(self, embedding, labels):
        return arcmargin_loss(self.cosine(embedding), labels, margin=self.margin, scale=self.scale,
                              easy_margin=self.easy_margin)


SPEC = LossSpec(
    name="arcmargin", layout="shuffle", classifies=True, params=ArcMarginParams,
    make=lambda params, embedding_dim, num_classes: ArcMarginLoss(embedding_dim, num_classes, **asdict(params)),
    summary="additive angular margin (ArcFace) on a cosine classifier of its own")
