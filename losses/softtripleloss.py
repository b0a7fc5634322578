"""SoftTriple loss (Qian et al., ICCV 2019): K learned centres per class, a softmax over them, and a
regulariser that merges centres of a class that are not needed."""
from dataclasses import dataclass

import numpy as np
import paddle
import paddle.nn.functional as F

from losses.common import cross_entropy, l2_normalize
from losses.cosine_classifier import CosineClassifier
from losses.registry import LossSpec, require, setting

_EPSILON = 1e-5  # inside the regulariser's square root: its gradient stays finite where two centres meet


@dataclass(frozen=True)
class SoftTripleParams:
    """The settings of softtripleloss (flags --softtriple_*; the paper's K, lambda, gamma, tau and delta)."""
    centers: int = setting(10, "softtriple_k", "centres K per class")
    scale: float = setting(20.0, "softtriple_lambda", "scale lambda of the class similarities")
    gamma: float = setting(0.1, "softtriple_gamma", "temperature gamma of the softmax over a class's centres")
    tau: float = setting(0.2, "softtriple_tau", "weight tau of the regulariser that merges centres")
    margin: float = setting(0.01, "softtriple_delta", "margin delta taken off the true class's similarity")

    def __post_init__(self):
        require(self, "positive", "centers", "scale", "gamma")
        require(self, "0 or more", "tau", "margin")


def class_similarities(cosine, num_classes, centers, gamma):
    """The relaxed similarity of each row to each class, [B, C * K] -> [B, C]: the class's centre cosines
    averaged with the weights softmax(cosine / gamma) over its K centres."""
    grouped = paddle.reshape(cosine, [-1, num_classes, centers])
    return paddle.sum(F.softmax(grouped / gamma, axis=2) * grouped, axis=2)


def center_spread(weight, num_classes, centers):
    """The regulariser of the centres `weight` [D, C * K] (class c's are the columns cK ... cK + K - 1):
    sum over each class's pairs of centres t < s of sqrt(2 + epsilon - 2 cos(w_t, w_s)) (about their
    distance as unit vectors), divided by C K (K - 1), as the authors' code and PML compute it. 0 for K = 1."""
    if centers == 1:
        return paddle.zeros([], weight.dtype)
    unit = paddle.reshape(l2_normalize(weight, axis=0).t(), [num_classes, centers, -1])
    cosines = paddle.matmul(unit, unit, transpose_y=True)  # [C, K, K]
    pairs = paddle.to_tensor(np.triu(np.ones((centers, centers), dtype=bool), k=1))
    spread = paddle.sqrt(paddle.clip(2.0 + _EPSILON - 2.0 * cosines, min=_EPSILON))
    total = paddle.sum(paddle.where(pairs.unsqueeze(0), spread, paddle.zeros_like(spread)))
    return total / (num_classes * centers * (centers - 1.0))


class SoftTripleLoss(CosineClassifier):
    """SoftTriple head: centres [embedding_dim, num_classes * centers], named "softtripleloss_centers" in static
    Programs. Loss = cross-entropy of scale * (S - margin on the true class), S from class_similarities of
    the L2-normalised embedding and centres, plus tau * center_spread."""

    def __init__(self, embedding_dim, num_classes, *, centers, scale, gamma, tau, margin):
        super().__init__(embedding_dim, num_classes * centers, "softtripleloss_centers")
        self.num_classes, self.centers = num_classes, centers
        self.scale, self.gamma, self.tau, self.margin = scale, gamma, tau, margin

    def forward(self, embedding, labels):
        similarity = class_similarities(self.cosine(embedding), self.num_classes, self.centers, self.gamma)
        is_target = paddle.cast(F.one_hot(paddle.reshape(labels, [-1]), self.num_classes), similarity.dtype)
        loss = cross_entropy(self.scale * (similarity - self.margin * is_target), labels)
        if self.tau:
            loss = loss + self.tau * center_spread(self.weight, self.num_classes, self.centers)
        return loss


SPEC = LossSpec(
    name="softtripleloss", layout="shuffle", classifies=True, params=SoftTripleParams,
    make=lambda params, embedding_dim, num_classes: SoftTripleLoss(
        embedding_dim, num_classes, centers=params.centers, scale=params.scale, gamma=params.gamma,
        tau=params.tau, margin=params.margin),
    summary="SoftTriple: K learned centres per class, softmax-weighted, with a regulariser merging centres")
