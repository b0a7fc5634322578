"""Multi-similarity loss (Wang et al., CVPR 2019): mined pairs weighted by self and relative similarity."""
from dataclasses import asdict, dataclass
from functools import partial

import paddle

from losses.common import (candidates, check_eager, l2_normalize, label_masks, masked_max, masked_min,
                           require_positive_and_negative_per_row)
from losses.registry import LossSpec, require, setting

_FAR = 1e4  # stands in for "minus infinity" inside exp(); exp(-1e4) is exactly 0 in float32 and float64


def log_one_plus_sum_exp(values, mask):
    """log(1 + sum over the masked entries of exp(values)) per row of `values` [B, N], overflow-free.

    A logsumexp over the row's masked entries and an extra zero term: the larger of 0 and the row's
    masked maximum is subtracted before exp(), and unmasked entries never reach exp() with their value.
    """
    row_max = paddle.clip(masked_max(values, mask, axis=1, keepdim=True), min=0.0)
    shifted = paddle.where(mask, values - row_max, paddle.full_like(values, -_FAR))
    total = paddle.exp(-row_max) + paddle.sum(paddle.exp(shifted), axis=1, keepdim=True)
    return paddle.squeeze(row_max + paddle.log(total), axis=1)


@dataclass(frozen=True)
class MultiSimilarityParams:
    """The settings of multisimilarityloss (flags --ms_*; base is the paper's lambda)."""
    alpha: float = setting(2.0, "ms_alpha", "scale alpha of the positive term")
    beta: float = setting(50.0, "ms_beta", "scale beta of the negative term")
    base: float = setting(0.5, "ms_lambda", "similarity offset lambda")
    epsilon: float = setting(0.1, "ms_epsilon", "margin epsilon of the pair mining")

    def __post_init__(self):
        require(self, "positive", "alpha", "beta")  # the terms are divided by them
        require(self, "a finite number", "base", "epsilon")


def multisimilarityloss(features, labels, references=None, reference_labels=None, *, alpha, beta, base, epsilon):
    """Multi-similarity loss of `features` [B, D] with class ids `labels` [B], summed over anchors / B.

    S: cosine similarities of the L2-normalised rows; P_i, N_i: anchor i's positives (same class,
    other row) and negatives. Pair mining: N'_i = {k in N_i: S_ik + epsilon > min_{P_i} S_ij},
    P'_i = {j in P_i: S_ij - epsilon < max_{N_i} S_ik}. An anchor with P'_i or N'_i empty adds 0;
    otherwise (1/alpha) log(1 + sum_{P'_i} exp(-alpha (S_ij - base)))
            + (1/beta) log(1 + sum_{N'_i} exp(beta (S_ik - base))).
    `base` is the paper's lambda. The mining is a selection (no gradient flows through it).
    With `references` P_i and N_i range over the batch and the references (losses/common.py, candidates).
    """
    check_eager(check_batch, labels)
    anchors, others, other_labels = candidates(features, labels, references, reference_labels, l2_normalize)
    similarities = paddle.matmul(anchors, others, transpose_y=True)
    positive, negative = label_masks(labels, other_labels)

    hardest_positive = masked_min(similarities, positive, axis=1, keepdim=True)
    hardest_negative = masked_max(similarities, negative, axis=1, keepdim=True)
    mined_negative = paddle.logical_and(negative, similarities + epsilon > hardest_positive)
    mined_positive = paddle.logical_and(positive, similarities - epsilon < hardest_negative)

    positive_term = log_one_plus_sum_exp(-alpha * (similarities - base), mined_positive) / alpha
    negative_term = log_one_plus_sum_exp(beta * (similarities - base), mined_negative) / beta
    active = paddle.logical_and(paddle.any(mined_positive, axis=1), paddle.any(mined_negative, axis=1))
    per_anchor = paddle.where(active, positive_term + negative_term, paddle.zeros_like(positive_term))
    return paddle.mean(per_anchor)  # the sum over anchors divided by the batch size


def check_batch(labels):
    require_positive_and_negative_per_row("multisimilarityloss", labels)


SPEC = LossSpec(
    name="multisimilarityloss", layout="pk", check_batch=check_batch, takes_references=True,
    params=MultiSimilarityParams,
    make=lambda params, embedding_dim, num_classes: partial(multisimilarityloss, **asdict(params)),
    summary="multi-similarity loss: mined pairs, soft weights from self and relative similarity")
