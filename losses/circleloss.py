"""Circle loss (Sun et al., CVPR 2020) on cosine similarities, as pytorch-metric-learning's CircleLoss."""
from dataclasses import asdict, dataclass
from functools import partial

import paddle
import paddle.nn.functional as F

from losses.common import (candidates, check_eager, l2_normalize, label_masks, masked_logsumexp, mean_of_nonzero,
                           require_positive_and_negative_per_row)
from losses.registry import LossSpec, require, setting

@dataclass(frozen=True)
class CircleParams:
    """The settings of circleloss (flags --circle_*; the paper's m and gamma)."""
    margin: float = setting(0.4, "circle_m", "relaxation m: optima 1 + m / -m, decision margins 1 - m / m")
    gamma: float = setting(80.0, "circle_gamma", "scale gamma of the similarities")

    def __post_init__(self):
        require(self, "a finite number", "margin")
        require(self, "positive", "gamma")


def softplus(x):
    """log(1 + exp(x)), exact for any x (Paddle's F.softplus returns x itself above a threshold)."""
    return F.relu(x) + paddle.log(1.0 + paddle.exp(-paddle.abs(x)))


def circleloss(features, labels, references=None, reference_labels=None, *, margin, gamma):
    """Circle loss of `features` [B, D] with class ids `labels` [B].

    s: cosine similarities of the L2-normalised rows. For anchor i with positives P_i and negatives N_i:
    L_i = log(1 + sum_{N_i} exp(gamma a_n (s_n - m)) * sum_{P_i} exp(-gamma a_p (s_p - 1 + m))),
    a_p = [1 + m - s_p]_+, a_n = [s_n + m]_+ (constants for the gradient, as in the paper and PML).
    The result is the mean of L_i over the anchors whose L_i is above 0 (PML's AvgNonZeroReducer); an
    anchor without a positive or a negative adds nothing. With `references`, P_i and N_i range over the
    batch and the references (losses/common.py, candidates).
    """
    check_eager(check_batch, labels)
    anchors, others, other_labels = candidates(features, labels, references, reference_labels, l2_normalize)
    similarities = paddle.matmul(anchors, others, transpose_y=True)
    positive, negative = label_masks(labels, other_labels)
    constant = similarities.detach()
    positive_logits = -gamma * F.relu(1.0 + margin - constant) * (similarities - (1.0 - margin))
    negative_logits = gamma * F.relu(constant + margin) * (similarities - margin)
    per_anchor = softplus(masked_logsumexp(positive_logits, positive) + masked_logsumexp(negative_logits, negative))
    counted = paddle.logical_and(paddle.any(positive, axis=1), paddle.any(negative, axis=1))
    return mean_of_nonzero(per_anchor, counted)


def check_batch(labels):
    require_positive_and_negative_per_row("circleloss", labels)


SPEC = LossSpec(
    name="circleloss", layout="pk", check_batch=check_batch, takes_references=True, params=CircleParams,
    make=lambda params, embedding_dim, num_classes: partial(circleloss, **asdict(params)),
    summary="circle loss: positive and negative similarities re-weighted by their distance to their optima")
