"""Multi-class N-pair loss on P x 2 batches (one anchor and one positive per class)."""
import paddle

from losses.common import check_eager_labels, log_softmax


def npairsloss(features, labels, *, reg_lambda=0.01):
    """Mean N-pair loss of `features` [2N, D] laid out as consecutive (anchor, positive) rows.

    Each anchor's logits are its dot products with all N positives (raw features); the
    cross-entropy target is the positives of the anchor's class (uniform over them if a
    class occurs in several pairs). Plus the embedding regulariser
    0.25 * reg_lambda * (mean |a|^2 + mean |p|^2), i.e. 0.5 * reg_lambda * mean |x|^2 over all rows.
    """
    check_eager_labels("npairsloss", labels)
    pairs = paddle.reshape(features, [-1, 2, features.shape[-1]])
    pair_labels = paddle.reshape(labels, [-1, 2])
    anchor, positive = pairs[:, 0], pairs[:, 1]
    logits = paddle.matmul(anchor, positive, transpose_y=True)
    same_class = pair_labels[:, 0].unsqueeze(1) == pair_labels[:, 1].unsqueeze(0)
    targets = paddle.cast(same_class, logits.dtype)
    targets = targets / paddle.sum(targets, axis=1, keepdim=True)
    cross_entropy = -paddle.sum(targets * log_softmax(logits), axis=1)
    squared_norms = paddle.sum(paddle.square(anchor), axis=1) + paddle.sum(paddle.square(positive), axis=1)
    return paddle.mean(cross_entropy) + 0.25 * reg_lambda * paddle.mean(squared_norms)
