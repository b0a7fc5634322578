"""Large margin cosine loss (CosFace, Wang et al., CVPR 2018): a cosine classifier with an additive cosine margin."""
from dataclasses import asdict, dataclass

import paddle
import paddle.nn.functional as F

from losses.common import cross_entropy
from losses.cosine_classifier import CosineClassifier
from losses.registry import LossSpec, require, setting


@dataclass(frozen=True)
class CosFaceParams:
    """The settings of cosface (flags --cos_*)."""
    scale: float = setting(30.0, "cos_scale", "scale s of the cosine logits")
    margin: float = setting(0.35, "cos_margin", "additive cosine margin m")

    def __post_init__(self):
        require(self, "positive", "scale")
        require(self, "0 or more", "margin")


def cosface_loss(cosine, labels, *, margin, scale):
    """Mean cross-entropy of the logits scale * (cos - margin) (target class) and scale * cos (others).

    `cosine` [B, C]: cosines between normalised embeddings and normalised class weights; `labels` [B].
    """
    is_target = paddle.cast(F.one_hot(paddle.reshape(labels, [-1]), cosine.shape[-1]), cosine.dtype)
    return cross_entropy(scale * (cosine - margin * is_target), labels)


class CosFaceLoss(CosineClassifier):
    """CosFace head: owns a weight [embedding_dim, num_classes], named `weight_name` in static Programs.

    Calling it with (embedding [B, D], labels [B]) returns the mean large-margin cosine loss of the
    cosines between L2-normalised embeddings and L2-normalised weight columns.
    """

    def __init__(self, embedding_dim, num_classes, *, margin, scale, weight_name="cosface_weights"):
        super().__init__(embedding_dim, num_classes, weight_name)
        self.margin, self.scale = margin, scale

    def forward(self, embedding, labels):
        return cosface_loss(self.cosine(embedding), labels, margin=self.margin, scale=self.scale)


SPEC = LossSpec(
    name="cosface", layout="shuffle", classifies=True, params=CosFaceParams,
    make=lambda params, embedding_dim, num_classes: CosFaceLoss(embedding_dim, num_classes, **asdict(params)),
    summary="large margin cosine loss (CosFace) on a cosine classifier of its own")
