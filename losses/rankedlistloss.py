"""Ranked list loss (Wang et al., CVPR 2019): each anchor ranks its positives before its negatives by a margin."""
from dataclasses import asdict, dataclass
from functools import partial

import paddle

from losses.common import (candidates, check_eager, euclidean_distances, l2_normalize, label_masks, masked_max,
                           require_positive_and_negative_per_row)
from losses.registry import LossSpec, require, setting


@dataclass(frozen=True)
class RankedListParams:
    """The settings of rankedlistloss (flags --rll_*; balance is the paper's lambda)."""
    alpha: float = setting(1.2, "rll_alpha", "distance alpha beyond which negatives cost nothing")
    margin: float = setting(0.4, "rll_margin", "margin m; positives cost beyond alpha - m")
    temperature: float = setting(10.0, "rll_temperature", "temperature T of the negative weights exp(T (alpha - d))")
    balance: float = setting(1.0, "rll_lambda", "weight lambda of the negative term")

    def __post_init__(self):
        require(self, "a finite number", "alpha")
        require(self, "0 or more", "margin", "temperature", "balance")


def rankedlistloss(features, labels, references=None, reference_labels=None, *, alpha, margin, temperature,
                   balance):
    """Mean ranked list loss over anchors of `features` [B, D] with class ids `labels` [B].

    d: Euclidean distances between the L2-normalised rows. For anchor i:
    - non-trivial positives P* = {j: same class, j != i, d_ij > alpha - margin};
      L_P = mean over P* of (d_ij - (alpha - margin)), 0 when P* is empty;
    - non-trivial negatives N* = {k: other class, d_ik < alpha}, weighted by
      w_ik = exp(temperature * (alpha - d_ik));
      L_N = sum_{N*} w_ik (alpha - d_ik) / sum_{N*} w_ik, 0 when N* is empty;
    - loss_i = L_P + balance * L_N; the result is the mean over anchors.

    The weights are constants for the gradient (computed from detached distances), as in the
    paper's optimisation section and the authors' Caffe layer, which scales each pair's
    gradient by its normalised weight without differentiating the weight.
    With `references` the positives and negatives j, k range over the batch and the references
    (losses/common.py, candidates).
    """
    check_eager(check_batch, labels)
    anchors, others, other_labels = candidates(features, labels, references, reference_labels, l2_normalize)
    distances = euclidean_distances(anchors, others)
    positive, negative = label_masks(labels, other_labels)
    dtype = distances.dtype

    hard_positive = paddle.logical_and(positive, distances > alpha - margin)
    positive_weights = paddle.cast(hard_positive, dtype)
    positive_sum = paddle.sum((distances - (alpha - margin)) * positive_weights, axis=1)
    positive_loss = positive_sum / paddle.clip(paddle.sum(positive_weights, axis=1), min=1.0)

    negative_loss = weighted_negative_term(distances, negative, alpha=alpha, temperature=temperature)
    return paddle.mean(positive_loss + balance * negative_loss)


def weighted_negative_term(distances, negative, *, alpha, temperature):
    """L_N [B] of every anchor (row of `distances` [B, N]) over its candidates that `negative` [B, N] marks:
    the non-trivial ones N* (d < alpha), weighted by exp(temperature * (alpha - d)) held constant,
    sum_{N*} w (alpha - d) / sum_{N*} w; 0 for an anchor without any."""
    hard_negative = paddle.logical_and(negative, distances < alpha)
    # Normalised weights as a masked softmax of temperature * (alpha - d): the row maximum is
    # subtracted first, so exp() stays in range whatever the temperature.
    logits = temperature * (alpha - distances.detach())
    row_max = masked_max(logits, hard_negative, axis=1, keepdim=True)
    weights = paddle.exp(paddle.where(hard_negative, logits - row_max, paddle.full_like(logits, -1e4)))
    weights = weights * paddle.cast(hard_negative, distances.dtype)
    weights = weights / paddle.clip(paddle.sum(weights, axis=1, keepdim=True), min=1e-30)
    return paddle.sum(weights * (alpha - distances), axis=1)


def check_batch(labels):
    require_positive_and_negative_per_row("rankedlistloss", labels)


SPEC = LossSpec(
    name="rankedlistloss", layout="pk", check_batch=check_batch, takes_references=True,
    params=RankedListParams,
    make=lambda params, embedding_dim, num_classes: partial(rankedlistloss, **asdict(params)),
    summary="ranked list loss: positives inside alpha - m, weighted negatives outside alpha, per anchor")
