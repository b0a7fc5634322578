"""Triplet loss: random (anchor, positive, negative) triplets or batch-hard mining on P x K batches."""
import paddle
import paddle.nn.functional as F

from losses.common import (check_eager_labels, l2_normalize, label_masks, masked_max, masked_min,
                           squared_distances)


def tripletloss(features, labels=None, *, margin=0.1):
    """Mean triplet loss over consecutive (anchor, positive, negative) rows of `features` [3T, D].

    On L2-normalised features, each triplet costs relu(|a-p|^2 - |a-n|^2 + margin).
    `labels` [3T] are only used to check the triplets in eager mode (the rows fix the roles).
    """
    if labels is not None:
        check_eager_labels("tripletloss", labels)
    triplets = paddle.reshape(l2_normalize(features), [-1, 3, features.shape[-1]])
    anchor, positive, negative = triplets[:, 0], triplets[:, 1], triplets[:, 2]
    anchor_positive = paddle.sum(paddle.square(anchor - positive), axis=1)
    anchor_negative = paddle.sum(paddle.square(anchor - negative), axis=1)
    return paddle.mean(F.relu(anchor_positive - anchor_negative + margin))


def batch_hard_tripletloss(features, labels, *, margin=0.1):
    """Batch-hard triplet loss: for each anchor its farthest positive and nearest negative.

    Squared distances of the L2-normalised `features` [B, D]; positives and negatives
    come from `labels` [B]; the loss is the mean over anchors of relu(d_ap - d_an + margin).
    """
    check_eager_labels("tripletloss", labels, triplet_mining="hard")
    distances = squared_distances(l2_normalize(features))
    positive, negative = label_masks(labels)
    hardest_positive = masked_max(distances, positive, axis=1)
    hardest_negative = masked_min(distances, negative, axis=1)
    return paddle.mean(F.relu(hardest_positive - hardest_negative + margin))
