"""Clustered ranked list loss (`cranked_loss` of the ranked-list ReID system): the ranked list loss's negative
term inside k-means groups of the batch, its positive term per class over the whole batch.

It shares rankedlistloss's settings (RankedListParams, the --rll_* flags) and its weighted negative term.
"""
from dataclasses import asdict
from functools import partial

import paddle
import paddle.nn.functional as F

from losses.common import (check_eager, euclidean_distances, l2_normalize, require_positive_and_negative_per_row,
                           squared_distances)
from losses.rankedlistloss import RankedListParams, weighted_negative_term
from losses.registry import LossSpec

# The author's grouping: k-means with 8 centroids; a group takes part in the negative term with more than 3 images.
CLUSTERS = 8
KMEANS_STEPS = 10
SMALLEST_GROUP = 4


def crankedloss(features, labels, noise, *, alpha, margin, temperature, balance):
    """Clustered ranked list loss of `features` [B, D] with class ids `labels` [B]; `noise` [B, B] uniform
    numbers (the trainer's stream of this iteration) choose the k-means start.

    x: the L2-normalised rows, d: their Euclidean distances; the groups: kmeans_groups of the detached x.
    - positive term, per class c with n_c images in the batch: the mean of [d_ij + margin - alpha]_+ over its
      n_c x n_c pairs (i, j), the self pairs (d = 0, no cost) included, as in the author's code;
    - negative term, per group g of more than 3 images: the mean over its anchors i of rankedlistloss's
      L_N(i) (weights exp(temperature * (alpha - d)) held constant) over the negatives of i inside g;
    - loss = the sum over classes of the positive terms + balance * the sum over groups of the negative terms.
    Unlike rankedlistloss it is a sum over classes and groups, not a mean over anchors: its scale grows with
    the number of classes in the batch (balance 1 is the author's loss, which has no lambda).
    """
    check_eager(check_batch, labels)
    points = l2_normalize(features)
    distances = euclidean_distances(points)
    labels = paddle.reshape(labels, [-1])
    same_class = labels.unsqueeze(1) == labels.unsqueeze(0)
    class_pairs = paddle.cast(same_class, distances.dtype)
    class_size = paddle.sum(class_pairs, axis=1)
    positive_costs = paddle.sum(F.relu(distances + (margin - alpha)) * class_pairs, axis=1)
    positive = paddle.sum(positive_costs / (class_size * class_size))

    groups = kmeans_groups(points.detach(), noise)
    same_group = groups.unsqueeze(1) == groups.unsqueeze(0)
    group_size = paddle.sum(paddle.cast(same_group, distances.dtype), axis=1)
    in_group_negatives = paddle.logical_and(same_group, paddle.logical_not(same_class))
    per_anchor = weighted_negative_term(distances, in_group_negatives, alpha=alpha, temperature=temperature)
    counted = paddle.cast(group_size >= SMALLEST_GROUP, distances.dtype)
    negative = paddle.sum(per_anchor * counted / group_size)
    return positive + balance * negative


def kmeans_groups(points, noise, clusters=CLUSTERS, steps=KMEANS_STEPS):
    """The group id [B] (int64) of every row of `points` [B, D]: k-means with `clusters` centroids, `steps` Lloyd steps.

    Start: the rows ranked first by noise[0] (a random choice of distinct rows, as scipy's kmeans starts, the
    author's; drawn from the trainer's stream, a function of seed and iteration, so a resumed run groups
    alike). With fewer rows than centroids rows repeat, and a repeated centroid stays empty. A step gives
    each row to its nearest centroid (the first at a tie) and moves each centroid to the mean of its rows;
    a centroid without rows stays where it is. The groups are the nearest centroids after the last step.
    (The author's scipy call runs k-means 10 times to convergence and keeps the best; here 10 is the steps.)
    Plain tensor ops: it runs eagerly and inside a static Program.
    """
    batch = paddle.cast(paddle.shape(points)[0], "int64")
    order = paddle.argsort(paddle.reshape(noise[0], [-1])[:batch])
    centroids = paddle.gather(points, paddle.gather(order, paddle.remainder(paddle.arange(clusters), batch)))
    for _ in range(steps):
        members = F.one_hot(_nearest(points, centroids), clusters).astype(points.dtype)
        counts = paddle.sum(members, axis=0).unsqueeze(1)
        means = paddle.matmul(members, points, transpose_x=True) / paddle.clip(counts, min=1.0)
        centroids = paddle.where(counts > 0, means, centroids)
    return _nearest(points, centroids)


def _nearest(points, centroids):
    return paddle.argmin(squared_distances(points, centroids), axis=1)


def check_batch(labels):
    require_positive_and_negative_per_row("crankedloss", labels)


SPEC = LossSpec(
    name="crankedloss", layout="pk", check_batch=check_batch, takes_noise=True, params=RankedListParams,
    make=lambda params, embedding_dim, num_classes: partial(crankedloss, **asdict(params)),
    summary="clustered ranked list loss: rankedlistloss's negatives inside k-means groups (8) of the batch, "
            "positives per class; a sum, not a mean")
