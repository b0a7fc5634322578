"""Center loss (Wen et al., ECCV 2016) as an auxiliary term added to any loss: reid-strong-baseline's
"with center" (weight 0.0005). It is not a --loss_name: engine/programs.py adds it to the objective
when --center_loss_weight is above 0."""
from dataclasses import dataclass

import paddle

from losses.common import check_eager, squared_distances
from losses.proxies import LearnedProxies
from losses.registry import LossSpec, require, setting


@dataclass(frozen=True)
class CenterLossParams:
    """The setting of the center loss term (flag --center_loss_weight; 0 leaves it out)."""
    weight: float = setting(0.0, "center_loss_weight",
                            "add weight x center loss (learned class centres) to the loss; reid-strong-baseline: "
                            "0.0005; 0: off")

    def __post_init__(self):
        require(self, "0 or more", "weight")


def center_loss(features, labels, centers):
    """Mean over rows of the squared Euclidean distance between `features` [B, D] and their class's row of
    `centers` [C, D] (class ids `labels` [B], 0..C-1); the raw features, not normalised."""
    distances = squared_distances(features, centers)  # [B, C]
    own = paddle.take_along_axis(distances, paddle.reshape(labels, [-1, 1]), axis=1)
    return paddle.mean(own)


class CenterLoss(LearnedProxies):
    """weight x center_loss with one learned centre per class, "centerloss_centers" [C, D] in static
    Programs, initialised from a standard normal as reid-strong-baseline's.

    reid-strong-baseline steps its centres with their own SGD on the gradient of the unweighted center
    loss (it divides their gradient by the weight). Here the centres share the optimizer and learn at
    1 / weight times its rate, which gives them the same unweighted gradient, at the network's rate and
    momentum instead of that SGD's 0.5.
    """

    def __init__(self, embedding_dim, num_classes, *, weight):
        super().__init__("centerloss", num_classes, embedding_dim, "centerloss_centers", lr_multiplier=1.0 / weight,
                         initializer=paddle.nn.initializer.Normal(0.0, 1.0))
        self.weight = weight

    def forward(self, embedding, labels):
        check_eager(self.check_batch, labels)
        return self.weight * center_loss(embedding, labels, self.proxies)


def make(params, embedding_dim, num_classes):
    """The weighted term for training, or None when it is off (weight 0) or there are no training classes."""
    if not params.weight or not num_classes:
        return None
    return CenterLoss(embedding_dim, num_classes, weight=params.weight)


SPEC = LossSpec(
    name="centerloss", layout="shuffle", params=CenterLossParams, make=make,
    summary="auxiliary center loss added to the loss: squared distance of each feature to its learned class centre")
