"""Softmax classification loss for the classifier branch."""
import paddle
import paddle.nn.functional as F


def softmax_loss(logits, labels, label_smoothing=0.0):
    """Mean cross-entropy of `logits` [B, C] against class ids `labels` [B].

    With `label_smoothing` e the target is (1 - e) on the true class plus e / C on every class.
    """
    return F.cross_entropy(logits, paddle.reshape(labels, [-1]), label_smoothing=label_smoothing)
