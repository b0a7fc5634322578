"""Large margin cosine loss (CosFace, Wang et al., CVPR 2018): a cosine classifier with an additive cosine margin."""
import paddle
import paddle.nn.functional as F

from losses.common import cross_entropy
from losses.cosine_classifier import CosineClassifier
from losses.registry import LossSpec


def cosface_loss(cosine, labels, *, margin=0.35, scale=30.0):
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

    def __init__(self, embedding_dim, num_classes, *, margin=0.35, scale=30.0, weight_name="cosface_weights"):
        super().__init__(embedding_dim, num_classes, weight_name)
        self.margin, self.scale = margin, scale

    def forward(self, embedding, labels):
        return cosface_loss(self.cosine(embedding), labels, margin=self.margin, scale=self.scale)


SPEC = LossSpec(
    name="cosface", layout="shuffle", classifies=True,
    build=lambda options, embedding_dim, num_classes: CosFaceLoss(
        embedding_dim, num_classes, margin=options.cos_margin, scale=options.cos_scale),
    summary="large margin cosine loss (CosFace) on a cosine classifier of its own")
