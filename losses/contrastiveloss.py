"""Contrastive loss (Hadsell, Chopra and LeCun 2006) as pytorch-metric-learning's ContrastiveLoss computes it."""
from dataclasses import asdict, dataclass
from functools import partial

import paddle
import paddle.nn.functional as F

from losses.common import (candidates, check_eager, l2_normalize, label_masks, mean_of_nonzero,
                           require_positive_and_negative_pair, squared_distances)
from losses.registry import LossSpec, require, setting


@dataclass(frozen=True)
class ContrastiveParams:
    """The settings of contrastiveloss (flags --contrastive_*; PML's pos_margin and neg_margin)."""
    positive_margin: float = setting(0.0, "contrastive_pos_margin",
                                     "positive pairs cost their distance beyond this margin")
    negative_margin: float = setting(1.0, "contrastive_neg_margin",
                                     "negative pairs cost their distance short of this margin")

    def __post_init__(self):
        require(self, "a finite number", "positive_margin", "negative_margin")


_MIN_SQUARED_DISTANCE = 1e-12  # below this two rows coincide: distance exactly 0


def exact_distances(a, b):
    """Euclidean distances [A, N] between the rows of `a` and `b`: exactly 0 (zero gradient) for coinciding rows.

    losses.common.euclidean_distances floors them at 1e-6 instead, which would make a coinciding
    positive pair a non-zero cost and count it in the mean of the non-zero costs.
    """
    squared = squared_distances(a, b)
    coincide = squared <= _MIN_SQUARED_DISTANCE
    return paddle.where(coincide, paddle.zeros_like(squared),
                        paddle.sqrt(paddle.clip(squared, min=_MIN_SQUARED_DISTANCE)))


def contrastiveloss(features, labels, references=None, reference_labels=None, *, positive_margin, negative_margin):
    """Contrastive loss of `features` [B, D] with class ids `labels` [B].

    d: Euclidean distances between the L2-normalised rows. Every ordered positive pair (i, j) costs
    [d_ij - positive_margin]_+ and every negative pair [negative_margin - d_ik]_+ (hinges not squared).
    The result is the mean of the positive pairs' non-zero costs plus the mean of the negative pairs'
    non-zero costs (each 0 when none is above 0), as PML's default reducer computes it.
    With `references` the pairs range over the batch and the references (losses/common.py, candidates).
    """
    check_eager(check_batch, labels)
    anchors, others, other_labels = candidates(features, labels, references, reference_labels, l2_normalize)
    distances = exact_distances(anchors, others)
    positive, negative = label_masks(labels, other_labels)
    return (mean_of_nonzero(F.relu(distances - positive_margin), positive)
            + mean_of_nonzero(F.relu(negative_margin - distances), negative))


def check_batch(labels):
    require_positive_and_negative_pair("contrastiveloss", labels)


SPEC = LossSpec(
    name="contrastiveloss", layout="pk", check_batch=check_batch, takes_references=True, params=ContrastiveParams,
    make=lambda params, embedding_dim, num_classes: partial(contrastiveloss, **asdict(params)),
    summary="contrastive loss (PML's defaults): positive pairs beyond pos_margin, negatives inside neg_margin")
