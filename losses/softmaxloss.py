"""Softmax classification loss for the classifier branch."""
from losses.common import cross_entropy
from losses.registry import LossSpec


def softmax_loss(logits, labels, label_smoothing=0.0):
    """Mean cross-entropy of `logits` [B, C] against class ids `labels` [B].

    With `label_smoothing` e the target is (1 - e) on the true class plus e / C on every class.
    """
    return cross_entropy(logits, labels, label_smoothing)


SPEC = LossSpec(
    name="softmax", layout="shuffle", classifies=True, is_classifier_branch=True,
    make=lambda params, embedding_dim, num_classes: None,
    summary="the classifier branch alone (cross-entropy, optional label smoothing)")
