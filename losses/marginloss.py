"""Margin loss with distance-weighted negative sampling (Wu et al., "Sampling Matters", ICCV 2017)."""
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import paddle
import paddle.nn.functional as F

from losses.common import (candidates, check_eager, euclidean_distances, l2_normalize, label_masks,
                           require_positive_and_negative_per_row)
from losses.registry import LossSpec, require, setting
from utility.errors import UserError

_FAR = 1e30           # score of the rows that must never be drawn (non-negatives)
_MIN_NOISE = 1e-20    # uniform noise is clipped into (0, 1) before the Gumbel transform
_MAX_NOISE = 1.0 - 1e-7
_MIN_SHELL = 1e-8     # floor of 1 - d^2/4 (d reaches 2 for opposite unit vectors)


@dataclass(frozen=True)
class MarginParams:
    """The settings of marginloss (flags --margin_*, not --margin: that one is TripletParams')."""
    alpha: float = setting(0.2, "margin_alpha", "margin alpha around the boundary beta")
    beta: float = setting(1.2, "margin_beta", "initial value of the learned boundary beta")
    per_class: bool = setting(True, "margin_beta_per_class",
                              "one learned beta per class (the anchor's) instead of one shared")
    cutoff: float = setting(0.5, "margin_cutoff",
                            "distances below this count as this in the distance-weighted sampling")

    def __post_init__(self):
        require(self, "a finite number", "alpha", "beta")
        require(self, "positive", "cutoff")  # the sampling weight takes log(distance)


def log_sampling_weights(distances, dim, cutoff):
    """log of the distance-weighted sampling weight 1 / q(d), up to a constant, for distances [B, B].

    On the unit sphere in `dim` dimensions, pairwise distances have density
    q(d) ∝ d^(dim-2) (1 - d^2/4)^((dim-3)/2). Negatives are drawn with weight 1 / q(d), so that the
    drawn distances spread evenly instead of bunching near sqrt(2). Distances are clipped below at
    `cutoff` (this caps the weight of the nearest negatives, whose gradients are noisy), and the
    weight is taken in log space, where it does not overflow at large `dim`.
    """
    d = paddle.clip(distances, min=cutoff)
    shell = paddle.clip(1.0 - 0.25 * paddle.square(d), min=_MIN_SHELL)
    return (2.0 - dim) * paddle.log(d) - 0.5 * (dim - 3.0) * paddle.log(shell)


def sample_negatives(distances, labels, noise, dim, cutoff, candidate_labels=None):
    """Bool mask [B, N]: the negatives drawn for each anchor row, one per positive of that row.

    Row i draws min(#positives_i, #negatives_i) distinct negatives with the Gumbel-top-k trick:
    the negatives with the largest log_sampling_weights + Gumbel noise, the noise being
    -log(-log(u)) of the uniform `noise` [B, B] in (0, 1). With one positive this is an exact draw
    from the categorical distribution ∝ 1 / q(d) over the row's negatives; with more, the draws are
    that distribution sampled without replacement. Selection only: no gradient flows through it.
    `distances` and `noise` are [B, N] against candidates labelled `candidate_labels` (default: the batch).
    """
    positive, negative = label_masks(labels, candidate_labels)
    uniform = paddle.clip(paddle.cast(noise, distances.dtype), min=_MIN_NOISE, max=_MAX_NOISE)
    gumbel = -paddle.log(-paddle.log(uniform))
    scores = log_sampling_weights(distances.detach(), dim, cutoff) + gumbel
    scores = paddle.where(negative, scores, paddle.full_like(scores, -_FAR))
    rank = paddle.argsort(paddle.argsort(scores, axis=1, descending=True), axis=1)
    draws = paddle.sum(paddle.cast(positive, "int64"), axis=1, keepdim=True)
    return paddle.logical_and(negative, rank < draws)


def margin_loss(features, labels, noise=None, references=None, reference_labels=None, *, beta, alpha, cutoff):
    """Mean margin loss [alpha + y_ij (D_ij - beta)]_+ of `features` [B, D] with class ids `labels` [B].

    D: Euclidean distances between the L2-normalised rows; y = +1 for positive pairs, -1 for
    negative pairs. The pairs are every ordered positive pair (i, j), plus, for each of them, one
    negative of anchor i drawn by distance-weighted sampling (see sample_negatives) from `noise`
    [B, B], uniform in (0, 1) (paddle.rand when None). `beta` is a number or a tensor that
    broadcasts against [B, B] (one value per anchor row: [B, 1]). The result is the mean over the
    pairs with non-zero loss, 0 when there are none.
    With `references` [R, D] / `reference_labels` [R] the positives and drawn negatives range over
    the batch and the references (losses/common.py, candidates), and `noise` is [B, B + R].
    """
    check_eager(check_batch, labels)
    anchors, others, other_labels = candidates(features, labels, references, reference_labels, l2_normalize)
    distances = euclidean_distances(anchors, others)
    if noise is None:
        noise = paddle.rand(paddle.shape(distances), dtype=distances.dtype)
    positive, _ = label_masks(labels, other_labels)
    negative = sample_negatives(distances, labels, noise, features.shape[-1], cutoff, other_labels)
    if not isinstance(beta, (int, float)):
        beta = paddle.cast(beta, distances.dtype)
    zero = paddle.zeros_like(distances)
    pair_loss = (paddle.where(positive, F.relu(alpha + distances - beta), zero)
                 + paddle.where(negative, F.relu(alpha + beta - distances), zero))
    active = paddle.sum(paddle.cast(pair_loss > 0.0, pair_loss.dtype))
    return paddle.sum(pair_loss) / paddle.clip(active, min=1.0)


class MarginLoss(paddle.nn.Layer):
    """margin_loss with a learned boundary beta, initially `beta`.

    One beta per class when `per_class` (the anchor's class id indexes it, so ids must be
    0..num_classes-1), else one shared value. It is named "marginloss_beta" in static Programs and
    excluded from the optimizer's weight decay (a global L2Decay would pull the boundary to 0).
    """

    def __init__(self, embedding_dim, num_classes, *, alpha, beta, per_class, cutoff, beta_name="marginloss_beta"):
        super().__init__()
        self.num_classes, self.alpha, self.per_class, self.cutoff = num_classes, alpha, per_class, cutoff
        # The fixed name matters in static Programs (checkpoints, sharing with a test Program);
        # eager mode forbids reusing a name and keys its state_dict by attribute instead.
        name = None if paddle.in_dynamic_mode() else beta_name
        self.beta = self.create_parameter(
            shape=[num_classes if per_class else 1],
            attr=paddle.ParamAttr(name=name, initializer=paddle.nn.initializer.Constant(beta),
                                  regularizer=paddle.regularizer.L2Decay(0.0)))

    def anchor_beta(self, labels):
        """beta of each anchor row, [B, 1] ([1, 1] when shared)."""
        if not self.per_class:
            return paddle.reshape(self.beta, [1, 1])
        return paddle.unsqueeze(paddle.gather(self.beta, paddle.reshape(labels, [-1])), axis=1)

    def forward(self, embedding, labels, noise=None, references=None, reference_labels=None):
        """Mean margin loss; `noise` [B, N] uniform in (0, 1) drives the sampling (paddle.rand when None)."""
        check_eager(self.check_batch, labels)
        return margin_loss(embedding, labels, noise, references, reference_labels, beta=self.anchor_beta(labels),
                           alpha=self.alpha, cutoff=self.cutoff)

    def check_batch(self, labels):
        check_batch(labels)
        if self.per_class:
            labels = np.asarray(labels).reshape(-1)
            outside = labels[(labels < 0) | (labels >= self.num_classes)]
            if outside.size:
                raise UserError(f"marginloss: class id {outside[0]} has no beta (one beta per class id "
                                f"0..{self.num_classes - 1}); use --margin_beta_per_class False or "
                                "the class ids of the training list")


def check_batch(labels):
    require_positive_and_negative_per_row("marginloss", labels)


def make(params, embedding_dim, num_classes):
    """The learned-beta layer for training; with no training classes (num_classes 0: eval.py's
    test_loss on held-out classes) the plain function at the fixed initial beta."""
    if not num_classes:
        return partial(margin_loss, beta=params.beta, alpha=params.alpha, cutoff=params.cutoff)
    return MarginLoss(embedding_dim, num_classes, **asdict(params))


SPEC = LossSpec(
    name="marginloss", layout="pk", check_batch=check_batch, params=MarginParams, make=make, takes_noise=True,
    takes_references=True,
    summary="margin loss with a learned beta and distance-weighted negative sampling")
