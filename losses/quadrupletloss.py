"""Quadruplet loss: the hardest positive pair against the hardest negative pair of the batch."""
import paddle.nn.functional as F

from losses.common import (check_eager_labels, l2_normalize, label_masks, masked_max, masked_min,
                           squared_distances)


def quadrupletloss(features, labels, *, margin=0.1):
    """relu(max positive distance - min negative distance + margin) over the whole batch.

    Squared Euclidean distances of the L2-normalised `features` [B, D]; pairs are positive
    when their `labels` [B] agree. Returns a scalar (the batch has one term).
    """
    check_eager_labels("quadrupletloss", labels)
    distances = squared_distances(l2_normalize(features))
    positive, negative = label_masks(labels)
    return F.relu(masked_max(distances, positive) - masked_min(distances, negative) + margin)
