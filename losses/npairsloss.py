"""Multi-class N-pair loss on P x 2 batches (one anchor and one positive per class)."""
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import paddle

from losses.common import check_eager, log_softmax
from losses.registry import LossSpec, require, setting
from utility.errors import UserError


@dataclass(frozen=True)
class NPairsParams:
    """The settings of npairsloss (flags --npairs_*)."""
    reg_lambda: float = setting(0.01, "npairs_reg_lambda", "weight of the L2 regulariser on embeddings")

    def __post_init__(self):
        require(self, "0 or more", "reg_lambda")


def npairsloss(features, labels, *, reg_lambda):
    """Mean N-pair loss of `features` [2N, D] laid out as consecutive (anchor, positive) rows.

    Each anchor's logits are its dot products with all N positives (raw features); the
    cross-entropy target is the positives of the anchor's class (uniform over them if a
    class occurs in several pairs). Plus the embedding regulariser
    0.25 * reg_lambda * (mean |a|^2 + mean |p|^2), i.e. 0.5 * reg_lambda * mean |x|^2 over all rows.
    """
    check_eager(check_pairs, labels)
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


def check_pairs(labels):
    """Rows must be (anchor, positive) pairs; each anchor's class must be among the positives'."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0 or labels.size % 2:
        raise UserError(f"npairsloss: batch of {labels.size} rows is not a list of (anchor, positive) "
                        "pairs (size must be even)")
    anchor, positive = labels[0::2], labels[1::2]
    missing = np.setdiff1d(anchor, positive)
    if missing.size:
        raise UserError(f"npairsloss: anchor of class {missing[0]} has no positive of its class in "
                        "the batch; npairsloss needs P x 2 batches (anchor, positive per class)")


SPEC = LossSpec(
    name="npairsloss", layout="pk", fixed_k=2, check_batch=check_pairs, params=NPairsParams,
    make=lambda params, embedding_dim, num_classes: partial(npairsloss, **asdict(params)),
    summary="multi-class N-pair loss on P x 2 batches, plus an L2 regulariser on the embeddings")
