"""Shared pieces of the metric losses: normalisation, distances, label masks, reference sets, batch checks.

Every loss finds its positives and negatives from the labels through the masks
built here, never from where rows sit in the batch. The helpers are plain
tensor ops, so they run eagerly and inside a static Program alike.

Reference sets: the pair losses compare each anchor (a row of the batch) with candidates.
Without references the candidates are the batch itself; with references [R, D] (a cross-batch
memory, the other devices' rows) they are concat(batch, references), the batch first, so the
self pair of anchor i is candidate i. A reference labelled IGNORE (-1) is neither a positive
nor a negative of any anchor, and no gradient flows into the references.
"""
import numpy as np
import paddle
import paddle.nn.functional as F

from utility.errors import UserError

# Stand-in for "no value" in masked max/min; finite so gradients stay finite.
_FAR = 1e30
_EXP_FAR = 1e4  # stands in for "minus infinity" inside exp(); exp(-1e4) is exactly 0 in float32 and float64


def l2_normalize(features, axis=1):
    """Scale `features` to unit Euclidean length along `axis` (rows by default)."""
    return F.normalize(features, p=2, axis=axis)


# Label of a reference row that takes no part in any pair (an empty memory slot, a disabled memory).
IGNORE = -1


def squared_distances(a, b=None):
    """Squared Euclidean distances [A, N] between the rows of `a` [A, D] and of `b` [N, D] (default `a`).

    Computed as |a|^2 + |b|^2 - 2 a.b and clipped at 0 against rounding.
    """
    squared_norms = paddle.sum(a * a, axis=1, keepdim=True)
    if b is None or b is a:
        products = paddle.matmul(a, a, transpose_y=True)
        distances = squared_norms + squared_norms.t() - 2.0 * products
    else:
        other_norms = paddle.sum(b * b, axis=1, keepdim=True)
        distances = squared_norms + other_norms.t() - 2.0 * paddle.matmul(a, b, transpose_y=True)
    return paddle.clip(distances, min=0.0)


# Squared distances are clipped before the square root: its gradient at 0 is infinite.
# Only the diagonal (and duplicate rows) get there, and the clip gives them a zero gradient.
_MIN_SQUARED_DISTANCE = 1e-12


def euclidean_distances(a, b=None):
    """Euclidean distances [A, N] between the rows of `a` and `b` (default `a`), finite gradient everywhere."""
    return paddle.sqrt(paddle.clip(squared_distances(a, b), min=_MIN_SQUARED_DISTANCE))


def candidates(features, labels, references=None, reference_labels=None, transform=None):
    """(anchors, candidates, candidate_labels) of a pair loss.

    anchors = transform(features) [B, D] (transform: e.g. l2_normalize; None keeps the rows).
    Without `references` the candidates are the anchors themselves (the same tensor) and their
    labels are `labels`. With `references` [R, D] and `reference_labels` [R] they are
    concat(anchors, transform(references)) [B + R, D] with labels concat(labels, reference_labels):
    the batch first, so anchor i's self pair is candidate i. The references are detached.
    """
    anchors = features if transform is None else transform(features)
    if references is None:
        return anchors, anchors, labels
    labels = paddle.reshape(labels, [-1])
    if reference_labels is None:
        raise ValueError("references need reference_labels")
    references = paddle.cast(references.detach(), anchors.dtype)
    if transform is not None:
        references = transform(references)
    reference_labels = paddle.cast(paddle.reshape(reference_labels, [-1]), labels.dtype)
    return (anchors, paddle.concat([anchors, references], axis=0),
            paddle.concat([labels, reference_labels.detach()], axis=0))


def label_masks(labels, candidate_labels=None):
    """Boolean masks [B, N] (positive, negative) from anchor class ids `labels` [B] and candidate ids [N].

    Candidates default to the anchors (N = B). positive[i, j]: j != i and the labels agree;
    negative[i, j]: the labels differ. With `candidate_labels` (a reference set: the batch
    first, see `candidates`), candidates labelled IGNORE are in neither mask.
    Works when the batch size is only known at run time (static graphs).
    """
    labels = paddle.reshape(labels, [-1])
    row_index = paddle.cumsum(paddle.ones_like(labels), axis=0)
    if candidate_labels is None or candidate_labels is labels:
        same = labels.unsqueeze(1) == labels.unsqueeze(0)
        is_self = row_index.unsqueeze(1) == row_index.unsqueeze(0)
        return paddle.logical_and(same, paddle.logical_not(is_self)), paddle.logical_not(same)
    candidate_labels = paddle.reshape(candidate_labels, [-1])
    same = labels.unsqueeze(1) == candidate_labels.unsqueeze(0)
    column_index = paddle.cumsum(paddle.ones_like(candidate_labels), axis=0)
    is_self = row_index.unsqueeze(1) == column_index.unsqueeze(0)
    counts = (candidate_labels != IGNORE).unsqueeze(0)
    positive = paddle.logical_and(paddle.logical_and(same, paddle.logical_not(is_self)), counts)
    negative = paddle.logical_and(paddle.logical_not(same), counts)
    return positive, negative


def masked_max(values, mask, axis=None, keepdim=False):
    """Max of `values` over the entries where `mask` is true (along `axis`, or all)."""
    return _pick(paddle.where(mask, values, paddle.full_like(values, -_FAR)), paddle.argmax, axis, keepdim)


def masked_min(values, mask, axis=None, keepdim=False):
    """Min of `values` over the entries where `mask` is true (along `axis`, or all)."""
    return _pick(paddle.where(mask, values, paddle.full_like(values, _FAR)), paddle.argmin, axis, keepdim)


def _pick(values, arg, axis, keepdim):
    """The entry of `values` that `arg` (argmax, argmin) picks along `axis` (None: over all entries).

    Same value as paddle.max/min, but the gradient goes through take_along_axis: Paddle 3.3.1's CPU
    max/min gradient took 2.6 s on a [60, 8252] matrix (an anchor batch against a memory of 8192),
    this takes milliseconds. At a tie the whole gradient goes to the first extreme entry.
    """
    if axis is None:
        flat = paddle.reshape(values, [-1])
        picked = paddle.take_along_axis(flat, arg(flat, axis=0, keepdim=True), axis=0)
        return paddle.reshape(picked, [1] * len(values.shape) if keepdim else [])
    picked = paddle.take_along_axis(values, arg(values, axis=axis, keepdim=True), axis=axis)
    return picked if keepdim else paddle.squeeze(picked, axis=axis)


def masked_mean(values, mask, axis):
    """Mean of `values` over the entries where `mask` is true, along `axis`."""
    weights = paddle.cast(mask, values.dtype)
    return paddle.sum(values * weights, axis=axis) / paddle.sum(weights, axis=axis)


def require_positive_and_negative_per_row(name, labels):
    """Batch check of the losses that need, for every anchor, a positive and a negative in the batch."""
    labels = np.asarray(labels).reshape(-1)
    classes, counts = np.unique(labels, return_counts=True)
    lonely = classes[counts < 2]
    if lonely.size:
        raise UserError(f"{name}: class {lonely[0]} has a single image in the batch, so its anchor has "
                        "no positive; use P x K batches with --samples_each_class >= 2")
    if classes.size < 2:
        raise UserError(f"{name}: every image in the batch has class {classes[0]}, so no anchor has "
                        "a negative; the batch needs at least two classes")


def require_positive_and_negative_pair(name, labels):
    """Batch check of the losses that need one positive pair and one negative pair in the whole batch."""
    labels = np.asarray(labels).reshape(-1)
    classes, counts = np.unique(labels, return_counts=True)
    if not np.any(counts >= 2):
        raise UserError(f"{name}: no two images in the batch share a class, so there is no positive "
                        "pair; use P x K batches with --samples_each_class >= 2")
    if classes.size < 2:
        raise UserError(f"{name}: every image in the batch has class {classes[0]}, so there is no "
                        "negative pair; the batch needs at least two classes")


def check_eager(check_batch, labels):
    """In eager mode, run the host-side `check_batch` on the tensor `labels`; no-op in a static graph."""
    if paddle.in_dynamic_mode():
        check_batch(labels.numpy())


def log_softmax(logits):
    """Log-probabilities of the rows of `logits` [B, C].

    Written out with logsumexp because F.log_softmax and F.cross_entropy (Paddle 3.3.1, CPU)
    floor log-probabilities near -64, which hides large losses such as arcmargin's at scale 80.
    """
    return logits - paddle.logsumexp(logits, axis=1, keepdim=True)


def cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean cross-entropy of `logits` [B, C] against class ids `labels` [B] (see cross_entropy_per_row)."""
    return paddle.mean(cross_entropy_per_row(logits, labels, label_smoothing))


def cross_entropy_per_row(logits, labels, label_smoothing=0.0):
    """Cross-entropy [B] of each row of `logits` [B, C] against its class id in `labels` [B].

    With `label_smoothing` e the target is (1 - e) on the true class plus e / C on every class.
    """
    log_probabilities = log_softmax(logits)
    is_target = paddle.cast(F.one_hot(paddle.reshape(labels, [-1]), logits.shape[-1]), logits.dtype)
    target_term = -paddle.sum(log_probabilities * is_target, axis=1)
    if label_smoothing:
        uniform_term = -paddle.mean(log_probabilities, axis=1)
        target_term = (1.0 - label_smoothing) * target_term + label_smoothing * uniform_term
    return target_term


def masked_logsumexp(values, mask):
    """log(sum over the masked entries of exp(values)) per row of `values` [B, N], overflow-free; 0 for a
    row without masked entries (its caller leaves such rows out)."""
    has_any = paddle.any(mask, axis=1, keepdim=True)
    row_max = paddle.where(has_any, masked_max(values, mask, axis=1, keepdim=True), paddle.zeros_like(values[:, :1]))
    shifted = paddle.where(mask, values - row_max, paddle.full_like(values, -_EXP_FAR))
    total = paddle.sum(paddle.exp(shifted), axis=1, keepdim=True)
    total = paddle.where(has_any, total, paddle.ones_like(total))
    return paddle.squeeze(row_max + paddle.log(total), axis=1)


def mean_of_nonzero(pair_losses, mask):
    """Mean of the entries of `pair_losses` that `mask` selects and that are above 0; 0 when there are none.

    PML's AvgNonZeroReducer: the pairs that already meet their margin do not dilute the mean.
    """
    selected = paddle.where(mask, pair_losses, paddle.zeros_like(pair_losses))
    active = paddle.sum(paddle.cast(selected > 0.0, selected.dtype))
    return paddle.sum(selected) / paddle.clip(active, min=1.0)
