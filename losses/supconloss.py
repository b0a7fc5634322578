"""Supervised contrastive loss (Khosla et al., NeurIPS 2020), as pytorch-metric-learning's SupConLoss."""
from dataclasses import asdict, dataclass
from functools import partial

import paddle

from losses.common import (candidates, check_eager, l2_normalize, label_masks, masked_logsumexp, mean_of_nonzero,
                           require_positive_and_negative_pair)
from losses.registry import LossSpec, require, setting


@dataclass(frozen=True)
class SupConParams:
    """The settings of supconloss (flag --supcon_temperature; the paper's tau)."""
    temperature: float = setting(0.1, "supcon_temperature", "temperature tau dividing the cosine similarities")

    def __post_init__(self):
        require(self, "positive", "temperature")


def supconloss(features, labels, references=None, reference_labels=None, *, temperature):
    """Supervised contrastive loss (the paper's L_out) of `features` [B, D] with class ids `labels` [B].

    s: cosine similarities of the L2-normalised rows. For anchor i with positives P(i) and all other rows
    A(i) (positives and negatives, not itself):
    L_i = -(1 / |P(i)|) sum_{p in P(i)} [s_ip / tau - log sum_{a in A(i)} exp(s_ia / tau)].
    The result is the mean of L_i over the anchors whose L_i is above 0 (PML's AvgNonZeroReducer): an
    anchor without a positive contributes nothing. With `references`, P(i) and A(i) range over the batch
    and the references (losses/common.py, candidates).
    """
    check_eager(check_batch, labels)
    anchors, others, other_labels = candidates(features, labels, references, reference_labels, l2_normalize)
    logits = paddle.matmul(anchors, others, transpose_y=True) / temperature
    positive, negative = label_masks(labels, other_labels)
    log_denominator = masked_logsumexp(logits, paddle.logical_or(positive, negative)).unsqueeze(1)
    is_positive = paddle.cast(positive, logits.dtype)
    positive_count = paddle.sum(is_positive, axis=1)
    per_anchor = -paddle.sum((logits - log_denominator) * is_positive, axis=1) / paddle.clip(positive_count, min=1.0)
    return mean_of_nonzero(per_anchor, positive_count > 0)


def check_batch(labels):
    require_positive_and_negative_pair("supconloss", labels)


SPEC = LossSpec(
    name="supconloss", layout="pk", check_batch=check_batch, takes_references=True, params=SupConParams,
    make=lambda params, embedding_dim, num_classes: partial(supconloss, **asdict(params)),
    summary="supervised contrastive loss: each positive against all other rows, softmax at temperature tau")
