"""Softmax classification loss for the classifier branch."""
from losses.common import cross_entropy


def softmax_loss(logits, labels, label_smoothing=0.0):
    """Mean cross-entropy of `logits` [B, C] against class ids `labels` [B].

    With `label_smoothing` e the target is (1 - e) on the true class plus e / C on every class.
    """
    return cross_entropy(logits, labels, label_smoothing)
