"""Quadruplet loss: the hardest positive pair against the hardest negative pair of the batch."""
from dataclasses import asdict
from functools import partial

import paddle.nn.functional as F

from losses.common import (candidates, check_eager, l2_normalize, label_masks, masked_max, masked_min,
                           require_positive_and_negative_pair, squared_distances)
from losses.registry import LossSpec
from losses.tripletloss import TripletParams


def quadrupletloss(features, labels, references=None, reference_labels=None, *, margin):
    """relu(max positive distance - min negative distance + margin) over the whole batch.

    Squared Euclidean distances of the L2-normalised `features` [B, D]; pairs are positive
    when their `labels` [B] agree. Returns a scalar (the batch has one term). With `references`
    the pairs are (batch row, batch row or reference) (losses/common.py, candidates).
    """
    check_eager(check_batch, labels)
    anchors, others, other_labels = candidates(features, labels, references, reference_labels, l2_normalize)
    distances = squared_distances(anchors, others)
    positive, negative = label_masks(labels, other_labels)
    return F.relu(masked_max(distances, positive) - masked_min(distances, negative) + margin)


def check_batch(labels):
    require_positive_and_negative_pair("quadrupletloss", labels)


SPEC = LossSpec(
    name="quadrupletloss", layout="pk", check_batch=check_batch, takes_references=True,
    params=TripletParams,  # --margin, shared with the triplet losses
    make=lambda params, embedding_dim, num_classes: partial(quadrupletloss, **asdict(params)),
    summary="hardest positive pair against hardest negative pair of the batch")
