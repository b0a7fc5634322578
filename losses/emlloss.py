"""EML loss (Energy-based Metric Learning surrogate) on raw squared Euclidean distances."""
import math

import paddle

from losses.common import (candidates, check_eager, label_masks, masked_max, masked_mean, masked_min,
                           require_positive_and_negative_per_row, squared_distances)
from losses.registry import LossSpec

BETA = 100000.0
THRESHOLD = 20.0


def _surrogate(theta, bias):
    """log(1 + BETA * theta * e^bias) / log(1 + BETA); finite only for moderate `bias`."""
    return paddle.log(1.0 + BETA * theta * paddle.exp(bias)) / math.log(1.0 + BETA)


def _surrogate_stable(theta, bias):
    """The surrogate, exact up to THRESHOLD and continued by its large-bias asymptote beyond it.

    For bias > THRESHOLD, log(1 + x) is replaced by log(x), which is linear in bias and never
    overflows; the two pieces meet at THRESHOLD.
    """
    threshold = paddle.full_like(bias, THRESHOLD)
    below = _surrogate(theta, paddle.minimum(bias, threshold))
    above = (paddle.log(theta) + paddle.maximum(bias, threshold) + math.log(BETA)) / math.log(1.0 + BETA)
    return below + above - _surrogate(theta, threshold)


def emlloss(features, labels, references=None, reference_labels=None):
    """Mean EML loss over anchors of `features` [B, D] with class ids `labels` [B].

    On squared distances of the raw (not normalised) features, for each anchor with
    positive distances P and negative distances N:
    theta = mean(exp(P - max P)) * mean(exp(min N - N)), bias = max P - min N,
    loss = surrogate(theta, bias) with BETA = 1e5 and the overflow-safe continuation above 20.
    With `references` P and N come from the batch and the references (losses/common.py, candidates).
    """
    check_eager(check_batch, labels)
    anchors, others, other_labels = candidates(features, labels, references, reference_labels)
    distances = squared_distances(anchors, others)
    positive, negative = label_masks(labels, other_labels)
    positive_max = masked_max(distances, positive, axis=1, keepdim=True)
    negative_min = masked_min(distances, negative, axis=1, keepdim=True)
    # Entries outside a mask are replaced by the row's max/min first, so exp() never overflows there.
    positive_terms = paddle.exp(paddle.where(positive, distances, positive_max) - positive_max)
    negative_terms = paddle.exp(negative_min - paddle.where(negative, distances, negative_min))
    theta = masked_mean(positive_terms, positive, axis=1) * masked_mean(negative_terms, negative, axis=1)
    bias = paddle.squeeze(positive_max - negative_min, axis=1)
    return paddle.mean(_surrogate_stable(theta, bias))


def check_batch(labels):
    require_positive_and_negative_per_row("emlloss", labels)


SPEC = LossSpec(
    name="emlloss", layout="pk", check_batch=check_batch, takes_references=True,
    make=lambda params, embedding_dim, num_classes: emlloss,
    summary="energy-based surrogate of the hardest positive vs. negative distances, per anchor")
