"""Uncertainty-weighted losses (data uncertainty, Kendall & Gal 2017; the ReID system's uc-tri-n and uc-cls).

The network predicts s = log sigma^2 for every image (--uncertainty True, models/head.py) and each sample's
loss L becomes 0.5 * (exp(-s) * L + s): an image the network calls uncertain costs less when it is wrong,
and pays s for saying so.
- uncertaintytriplet: the batch-hard triplet of each anchor, weighted with the mean s of its triplet
  (anchor, hardest positive, hardest negative); with --alpha > 0 the softmax branch is weighted too.
- uncertaintysoftmax: the softmax branch alone, each image's cross-entropy weighted with its own s.
"""
from dataclasses import asdict
from functools import partial

import paddle
import paddle.nn.functional as F

from losses.common import (check_eager, cross_entropy_per_row, l2_normalize, label_masks,
                           require_positive_and_negative_per_row, squared_distances)
from losses.registry import LossSpec
from losses.tripletloss import TripletParams

# Squared distances of unit vectors lie in [0, 4]: these stand in for "no candidate" in the hardest-pair search.
_BELOW_ANY, _ABOVE_ANY = -1.0, 5.0


def weighted_by_uncertainty(per_sample, log_variance):
    """Mean over samples of 0.5 * (exp(-s) * L + s), L the per-sample losses [B] and s their log variances [B]."""
    return paddle.mean(0.5 * (paddle.exp(-log_variance) * per_sample + log_variance))


def uncertainty_triplet(features, labels, log_variance=None, *, margin):
    """Uncertainty-weighted batch-hard triplet loss of `features` [B, D], class ids `labels` [B], log variances
    `log_variance` [B] (or [B, 1]).

    d: squared distances of the L2-normalised rows. Anchor i's triplet term is
    L_i = relu(d(i, p) - d(i, n) + margin) with p its farthest positive and n its nearest negative (the first
    at a tie), s_i = (s_i + s_p + s_n) / 3, and the loss is the mean of 0.5 * (exp(-s_i) L_i + s_i). The
    choice of p and n is not differentiated; L and every s of the triplet are. Without `log_variance` (eval.py's
    test_loss on embeddings alone) every s is 0: half the batch-hard triplet loss.
    """
    check_eager(check_batch, labels)
    distances = squared_distances(l2_normalize(features))
    positive, negative = label_masks(labels)
    farthest_positive = paddle.argmax(paddle.where(positive, distances, paddle.full_like(distances, _BELOW_ANY)),
                                      axis=1, keepdim=True)
    nearest_negative = paddle.argmin(paddle.where(negative, distances, paddle.full_like(distances, _ABOVE_ANY)),
                                     axis=1, keepdim=True)
    per_anchor = F.relu(paddle.take_along_axis(distances, farthest_positive, axis=1)
                        - paddle.take_along_axis(distances, nearest_negative, axis=1) + margin).squeeze(1)
    if log_variance is None:
        return weighted_by_uncertainty(per_anchor, paddle.zeros_like(per_anchor))
    s = paddle.reshape(log_variance, [-1])
    triplet_s = (s + paddle.gather(s, farthest_positive.squeeze(1)) + paddle.gather(s, nearest_negative.squeeze(1))) / 3
    return weighted_by_uncertainty(per_anchor, triplet_s)


def uncertainty_softmax_loss(logits, labels, log_variance, label_smoothing=0.0):
    """The softmax branch weighted by uncertainty: the mean of 0.5 * (exp(-s_i) CE_i + s_i), CE_i the
    cross-entropy of row i of `logits` [B, C] (label smoothing as losses.softmax_loss), s_i its log variance."""
    per_image = cross_entropy_per_row(logits, labels, label_smoothing)
    return weighted_by_uncertainty(per_image, paddle.reshape(log_variance, [-1]))


def check_batch(labels):
    require_positive_and_negative_per_row("uncertaintytriplet", labels)


TRIPLET_SPEC = LossSpec(
    name="uncertaintytriplet", layout="pk", check_batch=check_batch, params=TripletParams, takes_uncertainty=True,
    make=lambda params, embedding_dim, num_classes: partial(uncertainty_triplet, **asdict(params)),
    summary="batch-hard triplets weighted by predicted uncertainty: 0.5 (exp(-s) L + s), s the triplet's mean "
            "log variance (needs --uncertainty True)")

SOFTMAX_SPEC = LossSpec(
    name="uncertaintysoftmax", layout="shuffle", classifies=True, is_classifier_branch=True, takes_uncertainty=True,
    make=lambda params, embedding_dim, num_classes: None,
    summary="the classifier branch alone, each image's cross-entropy weighted by its predicted uncertainty: "
            "0.5 (exp(-s) CE + s) (needs --uncertainty True)")
