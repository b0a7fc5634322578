"""Proxy-NCA loss (Movshovitz-Attias et al., ICCV 2017), as pytorch-metric-learning's ProxyNCALoss."""
from dataclasses import dataclass

import paddle

from losses.common import check_eager, cross_entropy, l2_normalize, squared_distances
from losses.proxies import LearnedProxies
from losses.registry import LossSpec, require, setting


@dataclass(frozen=True)
class ProxyNCAParams:
    """The settings of proxyncaloss (flag --proxynca_scale; PML's softmax_scale)."""
    scale: float = setting(1.0, "proxynca_scale", "softmax scale s of the negative squared distances")

    def __post_init__(self):
        require(self, "positive", "scale")


def proxy_nca_loss(features, labels, proxies, *, scale):
    """Proxy-NCA loss of `features` [B, D] with class ids `labels` [B] (0..C-1) and `proxies` [C, D].

    d: squared Euclidean distances between the L2-normalised rows and the L2-normalised proxies. The loss
    is the mean over rows of -log(exp(-s d(x, p_y)) / sum_z exp(-s d(x, p_z))): the softmax
    cross-entropy over all proxies, the target's included (PML's form; the paper leaves the target out
    of the denominator).
    """
    distances = squared_distances(l2_normalize(features), l2_normalize(proxies))
    return cross_entropy(-scale * distances, labels)


class ProxyNCALoss(LearnedProxies):
    """proxy_nca_loss with one learned proxy per class, "proxyncaloss_proxies" [C, D] in static Programs,
    initialised from a standard normal (PML's initialisation)."""

    def __init__(self, embedding_dim, num_classes, *, scale):
        super().__init__("proxyncaloss", num_classes, embedding_dim, "proxyncaloss_proxies",
                         initializer=paddle.nn.initializer.Normal(0.0, 1.0))
        self.scale = scale

    def forward(self, embedding, labels):
        check_eager(self.check_batch, labels)
        return proxy_nca_loss(embedding, labels, self.proxies, scale=self.scale)


SPEC = LossSpec(
    name="proxyncaloss", layout="shuffle", classifies=True, params=ProxyNCAParams,
    make=lambda params, embedding_dim, num_classes: ProxyNCALoss(embedding_dim, num_classes, scale=params.scale),
    summary="Proxy-NCA: softmax over one learned proxy per class of the scaled negative squared distances")
