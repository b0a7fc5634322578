"""Triplet loss: random (anchor, positive, negative) triplets or batch-hard mining on P x K batches."""
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import paddle
import paddle.nn.functional as F

from losses.common import (candidates, check_eager, l2_normalize, label_masks, masked_max, masked_min,
                           require_positive_and_negative_per_row, squared_distances)
from losses.registry import LossSpec, require, setting
from utility.errors import UserError


@dataclass(frozen=True)
class TripletParams:
    """The settings of the triplet-style hinges, shared by tripletloss, batchhardtripletloss and
    quadrupletloss: one margin, one flag (--margin)."""
    margin: float = setting(0.1, "margin", "margin by which a positive distance must undercut a negative one")

    def __post_init__(self):
        require(self, "0 or more", "margin")


def tripletloss(features, labels=None, *, margin):
    """Mean triplet loss over consecutive (anchor, positive, negative) rows of `features` [3T, D].

    On L2-normalised features, each triplet costs relu(|a-p|^2 - |a-n|^2 + margin).
    `labels` [3T] are only used to check the triplets in eager mode (the rows fix the roles).
    """
    if labels is not None:
        check_eager(check_triplets, labels)
    triplets = paddle.reshape(l2_normalize(features), [-1, 3, features.shape[-1]])
    anchor, positive, negative = triplets[:, 0], triplets[:, 1], triplets[:, 2]
    anchor_positive = paddle.sum(paddle.square(anchor - positive), axis=1)
    anchor_negative = paddle.sum(paddle.square(anchor - negative), axis=1)
    return paddle.mean(F.relu(anchor_positive - anchor_negative + margin))


def batch_hard_tripletloss(features, labels, references=None, reference_labels=None, *, margin):
    """Batch-hard triplet loss: for each anchor its farthest positive and nearest negative.

    Squared distances of the L2-normalised `features` [B, D]; positives and negatives
    come from `labels` [B]; the loss is the mean over anchors of relu(d_ap - d_an + margin).
    With `references` [R, D] / `reference_labels` [R] the positives and negatives are searched
    among the batch and the references (losses/common.py, candidates).
    """
    check_eager(check_batch_hard, labels)
    anchors, others, other_labels = candidates(features, labels, references, reference_labels, l2_normalize)
    distances = squared_distances(anchors, others)
    positive, negative = label_masks(labels, other_labels)
    hardest_positive = masked_max(distances, positive, axis=1)
    hardest_negative = masked_min(distances, negative, axis=1)
    return paddle.mean(F.relu(hardest_positive - hardest_negative + margin))


def check_triplets(labels):
    """Rows must be (anchor, positive, negative) triplets by label."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0 or labels.size % 3:
        raise UserError(f"tripletloss: batch of {labels.size} rows is not a list of "
                        "(anchor, positive, negative) triplets (size must be a multiple of 3)")
    anchor, positive, negative = labels[0::3], labels[1::3], labels[2::3]
    broken = np.flatnonzero((anchor != positive) | (anchor == negative))
    if broken.size:
        i = broken[0]
        raise UserError(f"tripletloss: triplet {i} has labels (anchor {anchor[i]}, positive {positive[i]}, "
                        f"negative {negative[i]}); the positive must share the anchor's class and "
                        "the negative must not")


def check_batch_hard(labels):
    require_positive_and_negative_per_row("batchhardtripletloss", labels)


SPEC = LossSpec(
    name="tripletloss", layout="triplet", check_batch=check_triplets, params=TripletParams,
    make=lambda params, embedding_dim, num_classes: partial(tripletloss, **asdict(params)),
    summary="random (anchor, positive, negative) triplets: relu(d_ap - d_an + margin)")

BATCH_HARD_SPEC = LossSpec(
    name="batchhardtripletloss", layout="pk", check_batch=check_batch_hard, takes_references=True,
    params=TripletParams,
    make=lambda params, embedding_dim, num_classes: partial(batch_hard_tripletloss, **asdict(params)),
    summary="batch-hard triplets on P x K batches: farthest positive, nearest negative per anchor")
