"""Proxy anchor loss (Kim et al., CVPR 2020): each class proxy is an anchor against the batch."""
from dataclasses import dataclass

import paddle
import paddle.nn.functional as F

from losses.common import check_eager, l2_normalize
from losses.multisimilarityloss import log_one_plus_sum_exp
from losses.proxies import LearnedProxies
from losses.registry import LossSpec, require, setting


@dataclass(frozen=True)
class ProxyAnchorParams:
    """The settings of proxyanchorloss (flags --proxyanchor_*; the paper's alpha and delta)."""
    alpha: float = setting(32.0, "proxyanchor_alpha", "scale alpha of the similarities")
    margin: float = setting(0.1, "proxyanchor_delta", "margin delta")
    lr_multiplier: float = setting(100.0, "proxyanchor_proxy_lr",
                                   "the proxies learn at this multiple of the learning rate (the paper's 100)")

    def __post_init__(self):
        require(self, "positive", "alpha", "lr_multiplier")
        require(self, "a finite number", "margin")


def proxy_anchor_loss(features, labels, proxies, *, alpha, margin):
    """Proxy anchor loss of `features` [B, D] with class ids `labels` [B] (0..C-1) and `proxies` [C, D].

    s(x, p): cosine similarity. With P all proxies and P+ those whose class is in the batch:
    (1/|P+|) sum_{p in P+} log(1 + sum_{x of p's class} exp(-alpha (s(x, p) - margin)))
    + (1/|P|) sum_{p in P} log(1 + sum_{x of other classes} exp(alpha (s(x, p) + margin))).
    """
    similarities = paddle.matmul(l2_normalize(proxies), l2_normalize(features), transpose_y=True)  # [C, B]
    of_class = paddle.cast(F.one_hot(paddle.reshape(labels, [-1]), proxies.shape[0]), "bool").t()
    positive_terms = log_one_plus_sum_exp(-alpha * (similarities - margin), of_class)
    negative_terms = log_one_plus_sum_exp(alpha * (similarities + margin), paddle.logical_not(of_class))
    in_batch = paddle.any(of_class, axis=1)
    positive_count = paddle.sum(paddle.cast(in_batch, similarities.dtype))
    positive_sum = paddle.sum(paddle.where(in_batch, positive_terms, paddle.zeros_like(positive_terms)))
    return positive_sum / paddle.clip(positive_count, min=1.0) + paddle.mean(negative_terms)


class ProxyAnchorLoss(LearnedProxies):
    """proxy_anchor_loss with one learned proxy per class, "proxyanchorloss_proxies" [C, D] in static
    Programs, initialised as the paper's (Kaiming normal) and learned at `lr_multiplier` times the rate."""

    def __init__(self, embedding_dim, num_classes, *, alpha, margin, lr_multiplier):
        super().__init__("proxyanchorloss", num_classes, embedding_dim, "proxyanchorloss_proxies",
                         lr_multiplier=lr_multiplier)
        self.alpha, self.margin = alpha, margin

    def forward(self, embedding, labels):
        check_eager(self.check_batch, labels)
        return proxy_anchor_loss(embedding, labels, self.proxies, alpha=self.alpha, margin=self.margin)


SPEC = LossSpec(
    name="proxyanchorloss", layout="shuffle", classifies=True, params=ProxyAnchorParams,
    make=lambda params, embedding_dim, num_classes: ProxyAnchorLoss(
        embedding_dim, num_classes, alpha=params.alpha, margin=params.margin, lr_multiplier=params.lr_multiplier),
    summary="proxy anchor loss: one learned proxy per class (learned at 100x the rate) as anchor of the batch")
