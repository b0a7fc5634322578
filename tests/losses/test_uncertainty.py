"""uncertaintytriplet and the uncertainty-weighted softmax branch against numpy loops, eagerly and in a static
Program; gradients in the features, the logits and the log variances."""
import math

import numpy as np
import paddle
import pytest
from loss_checks import (SHAPES, assert_gradient, assert_shuffle_invariant, np_batch_hard, np_log_softmax,
                         np_normalize, np_sqdist, pairs_of, pk_labels, tensor, value)
from paddle_modes import static_mode

import losses
from losses.uncertainty import uncertainty_softmax_loss, uncertainty_triplet
from utility.errors import UserError

MARGIN = 0.1  # TripletParams' default


def np_weighted(loss, s):
    return 0.5 * (math.exp(-s) * loss + s)


def np_uncertainty_triplet(features, labels, s, *, margin):
    """Per anchor: the farthest positive p and nearest negative n (the first at a tie), the hinge on squared
    distances of the normalised rows, weighted with the mean s of (anchor, p, n); the mean over anchors."""
    x = np_normalize(features)
    terms = []
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, labels, i)
        p = max(positives, key=lambda j: np_sqdist(x[i], x[j]))
        n = min(negatives, key=lambda k: np_sqdist(x[i], x[k]))
        hinge = max(np_sqdist(x[i], x[p]) - np_sqdist(x[i], x[n]) + margin, 0.0)
        terms.append(np_weighted(hinge, (s[i] + s[p] + s[n]) / 3))
    return np.mean(terms)


def np_uncertainty_softmax(logits, labels, s, label_smoothing=0.0):
    terms = []
    for row, label, si in zip(logits, labels, s):
        log_p = np_log_softmax(row)
        ce = (1 - label_smoothing) * -log_p[label] + label_smoothing * -np.mean(log_p)
        terms.append(np_weighted(ce, si))
    return np.mean(terms)


@pytest.mark.parametrize("classes,per_class,dim", SHAPES)
def test_triplet_matches_reference(classes, per_class, dim):
    rng = np.random.default_rng(classes * 100 + per_class * 10 + dim)
    labels = pk_labels(classes, per_class)
    features, s = rng.normal(size=(len(labels), dim)), rng.normal(size=len(labels))
    loss = losses.get("uncertaintytriplet").build_loss(dim, classes)(tensor(features), paddle.to_tensor(labels),
                                                                      log_variance=tensor(s))
    assert value(loss) == pytest.approx(np_uncertainty_triplet(features, labels, s, margin=MARGIN), rel=1e-9)


def test_triplet_at_zero_log_variance_is_half_the_batch_hard_loss():
    rng = np.random.default_rng(2)
    features, labels = rng.normal(size=(12, 4)), pk_labels(3, 4)
    expected = 0.5 * np_batch_hard(features, labels, margin=0.5)
    assert expected > 0.05
    y = paddle.to_tensor(labels)
    assert value(uncertainty_triplet(tensor(features), y, tensor(np.zeros(12)), margin=0.5)) == pytest.approx(expected)
    assert value(uncertainty_triplet(tensor(features), y, margin=0.5)) == pytest.approx(expected)  # eval's test_loss


def test_the_best_log_variance_is_the_log_of_the_loss():
    # d/ds 0.5 (exp(-s) L + s) = 0 at s = log L: there the gradient in s vanishes, elsewhere it does not.
    logits, labels = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), np.array([1, 1])
    ce = np.array([-np_log_softmax(row)[label] for row, label in zip(logits, labels)])
    for s, vanishes in ((np.log(ce), True), (np.log(ce) + 0.5, False)):
        s_tensor = tensor(s)
        uncertainty_softmax_loss(paddle.to_tensor(logits), paddle.to_tensor(labels), s_tensor).backward()
        assert (np.abs(s_tensor.grad.numpy()).max() < 1e-12) == vanishes


def test_triplet_gradients_in_features_and_log_variances():
    rng = np.random.default_rng(11)
    features, labels, s = rng.normal(size=(9, 4)), pk_labels(3, 3), rng.normal(size=9)
    y = paddle.to_tensor(labels)
    assert_gradient(lambda f: uncertainty_triplet(f, y, paddle.to_tensor(s), margin=0.5),
                    lambda f: np_uncertainty_triplet(f, labels, s, margin=0.5), features)
    assert_gradient(lambda v: uncertainty_triplet(paddle.to_tensor(features), y, v, margin=0.5),
                    lambda v: np_uncertainty_triplet(features, labels, v, margin=0.5), s)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_softmax_matches_reference_and_its_gradients(label_smoothing):
    rng = np.random.default_rng(5)
    logits, labels, s = 3 * rng.normal(size=(6, 4)), np.array([0, 3, 1, 1, 2, 0]), rng.normal(size=6)
    y = paddle.to_tensor(labels)
    loss = uncertainty_softmax_loss(tensor(logits), y, tensor(s), label_smoothing)
    assert value(loss) == pytest.approx(np_uncertainty_softmax(logits, labels, s, label_smoothing), rel=1e-9)
    assert_gradient(lambda z: uncertainty_softmax_loss(z, y, paddle.to_tensor(s), label_smoothing),
                    lambda z: np_uncertainty_softmax(z, labels, s, label_smoothing), logits)
    assert_gradient(lambda v: uncertainty_softmax_loss(paddle.to_tensor(logits), y, v, label_smoothing),
                    lambda v: np_uncertainty_softmax(logits, labels, v, label_smoothing), s)


def test_shuffled_batch_gives_the_same_loss():
    rng = np.random.default_rng(4)
    labels = pk_labels(4, 3, spread=False)
    features, s = rng.normal(size=(12, 8)), rng.normal(size=12)
    assert_shuffle_invariant(
        lambda f, y, order: value(uncertainty_triplet(tensor(f), paddle.to_tensor(y), tensor(s[order]), margin=0.5)),
        features, labels, rng)


@pytest.mark.parametrize("labels,message", [([0, 0, 1, 1, 2], "uncertaintytriplet: class 2 has a single image"),
                                            ([1, 1, 1, 1], "no anchor has a negative")])
def test_bad_batch_raises_eagerly(labels, message):
    with pytest.raises(UserError, match=message):
        uncertainty_triplet(paddle.randn([len(labels), 4]), paddle.to_tensor(np.array(labels)),
                            paddle.zeros([len(labels)]), margin=0.1)


def test_softmax_branch_spec_builds_no_metric_loss():
    spec = losses.get("uncertaintysoftmax")
    assert spec.build_loss(4, 3) is None and spec.is_classifier_branch and spec.takes_uncertainty
    assert losses.get("uncertaintytriplet").takes_uncertainty and not spec.takes_references


def test_static_program_trains_one_step():
    # A Linear(5 -> 4) embedding, a Linear(5 -> 1) log variance and a Linear(4 -> 3) classifier: the triplet term
    # plus the weighted softmax branch, one SGD step; the batch size is known only at run time.
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2])
    inputs = np.random.default_rng(15).normal(size=(9, 5)).astype("float32")
    with static_mode():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 5], "float32")
            y = paddle.static.data("y", [None], "int64")
            embedding = paddle.nn.Linear(5, 4)(x)
            log_variance = paddle.nn.Linear(5, 1)(x)
            logits = paddle.nn.Linear(4, 3)(embedding)
            triplet = losses.get("uncertaintytriplet").build_loss(4, 3)(embedding, y, log_variance=log_variance)
            softmax = uncertainty_softmax_loss(logits, y, log_variance)
            paddle.optimizer.SGD(learning_rate=0.5).minimize(triplet + softmax)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        feed = {"x": inputs, "y": labels}
        first = exe.run(main, feed=feed, fetch_list=[triplet, softmax, embedding, log_variance, logits])
        second = exe.run(main, feed=feed, fetch_list=[triplet, softmax])
    t, c, emb, s, z = (np.asarray(a, dtype=float) for a in first)
    assert t.shape == () and c.shape == ()
    assert t.item() == pytest.approx(np_uncertainty_triplet(emb, labels, s[:, 0], margin=MARGIN), rel=1e-4)
    assert c.item() == pytest.approx(np_uncertainty_softmax(z, labels, s[:, 0]), rel=1e-4)
    assert second[0].item() + second[1].item() != pytest.approx(t.item() + c.item())
    assert paddle.in_dynamic_mode()
