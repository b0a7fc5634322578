"""Losses against independent numpy implementations of their formulas, eagerly and in a static Program."""
import math

import numpy as np
import paddle
import pytest
from numeric import numeric_gradient
from paddle_modes import static_loss_step, static_mode

import losses
from cli.args import defaults
from losses.arcmarginloss import arcmargin_loss
from losses.emlloss import emlloss
from losses.npairsloss import npairsloss
from losses.quadrupletloss import quadrupletloss
from losses.softmaxloss import softmax_loss
from losses.tripletloss import batch_hard_tripletloss, tripletloss
from utility.errors import UserError

SHAPES = [(3, 2, 4), (4, 2, 16), (2, 4, 4), (4, 4, 16), (3, 4, 4)]  # (P classes, K per class, D)


# ---------------------------------------------------------------- numpy references (loops, not masks)

def np_normalize(x, axis=1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def np_sqdist(a, b):
    return float(np.sum((a - b) ** 2))


def np_positives_negatives(features, labels, i):
    """Squared distances from row i to its positives and to its negatives."""
    positives = [np_sqdist(features[i], features[j]) for j in range(len(labels)) if j != i and labels[j] == labels[i]]
    negatives = [np_sqdist(features[i], features[j]) for j in range(len(labels)) if labels[j] != labels[i]]
    return np.array(positives), np.array(negatives)


def np_triplet(features, margin):
    f = np_normalize(features)
    terms = [max(np_sqdist(f[t], f[t + 1]) - np_sqdist(f[t], f[t + 2]) + margin, 0.0)
             for t in range(0, len(f), 3)]
    return np.mean(terms)


def np_batch_hard(features, labels, margin):
    f = np_normalize(features)
    terms = []
    for i in range(len(labels)):
        positives, negatives = np_positives_negatives(f, labels, i)
        terms.append(max(positives.max() - negatives.min() + margin, 0.0))
    return np.mean(terms)


def np_quadruplet(features, labels, margin):
    f = np_normalize(features)
    pairs = [(np_sqdist(f[i], f[j]), labels[i] == labels[j])
             for i in range(len(labels)) for j in range(len(labels)) if i != j]
    hardest_positive = max(d for d, same in pairs if same)
    hardest_negative = min(d for d, same in pairs if not same)
    return max(hardest_positive - hardest_negative + margin, 0.0)


def np_eml(features, labels, beta=100000.0, threshold=20.0):
    def surrogate(theta, bias):
        return math.log(1 + beta * theta * math.exp(bias)) / math.log(1 + beta)

    terms = []
    for i in range(len(labels)):
        positives, negatives = np_positives_negatives(features, labels, i)
        theta = np.mean(np.exp(positives - positives.max())) * np.mean(np.exp(-(negatives - negatives.min())))
        bias = positives.max() - negatives.min()
        terms.append(surrogate(theta, min(bias, threshold))
                     + (math.log(theta) + max(bias, threshold) + math.log(beta)) / math.log(1 + beta)
                     - surrogate(theta, threshold))
    return np.mean(terms)


def np_log_softmax(row):
    shifted = row - row.max()
    return shifted - math.log(np.sum(np.exp(shifted)))


def np_npairs(features, labels, reg_lambda):
    anchors, positives = features[0::2], features[1::2]
    anchor_labels, positive_labels = labels[0::2], labels[1::2]
    cross_entropy = []
    for i, anchor in enumerate(anchors):
        target = (positive_labels == anchor_labels[i]).astype(float)
        target /= target.sum()
        cross_entropy.append(-np.sum(target * np_log_softmax(positives @ anchor)))
    reg = np.mean(np.sum(anchors ** 2, axis=1)) + np.mean(np.sum(positives ** 2, axis=1))
    return np.mean(cross_entropy) + 0.25 * reg_lambda * reg


def np_arcmargin(cosine, labels, margin, scale, easy_margin):
    terms = []
    for row, label in zip(cosine, labels):
        logits = row.copy()
        c = row[label]
        angle = math.acos(c)
        if easy_margin:
            logits[label] = math.cos(angle + margin) if c > 0 else c
        else:
            logits[label] = math.cos(angle + margin) if angle + margin < math.pi else c - margin * math.sin(margin)
        terms.append(-np_log_softmax(scale * logits)[label])
    return np.mean(terms)


def np_softmax_loss(logits, labels, smoothing):
    classes = logits.shape[1]
    terms = []
    for row, label in zip(logits, labels):
        target = np.full(classes, smoothing / classes)
        target[label] += 1 - smoothing
        terms.append(-np.sum(target * np_log_softmax(row)))
    return np.mean(terms)


# ---------------------------------------------------------------- helpers

def pk_labels(classes, per_class):
    return np.repeat(np.arange(classes) * 7 + 3, per_class)  # arbitrary, non-contiguous ids


def triplet_labels(triplets, rng):
    rows = []
    for _ in range(triplets):
        anchor, negative = rng.choice(20, size=2, replace=False)
        rows += [anchor, anchor, negative]
    return np.array(rows)


def tensor(array):
    return paddle.to_tensor(array, stop_gradient=False)


def value(loss):
    assert loss.shape == [], "a loss must be a scalar tensor"
    return loss.item()


def analytic_and_numeric_gradient(paddle_loss, numpy_loss, x, step=1e-6):
    """Paddle's gradient of paddle_loss at x and the central difference of numpy_loss."""
    x_tensor = tensor(x)
    paddle_loss(x_tensor).backward()
    return x_tensor.grad.numpy(), numeric_gradient(numpy_loss, x, step)


# ---------------------------------------------------------------- forward values

@pytest.mark.parametrize("triplets,dim", [(2, 4), (4, 16), (5, 4)])
@pytest.mark.parametrize("margin", [0.1, 0.5, 1.5])
def test_tripletloss_matches_reference(triplets, dim, margin):
    rng = np.random.default_rng(triplets * 10 + dim)
    features = rng.normal(size=(3 * triplets, dim))
    labels = triplet_labels(triplets, rng)
    loss = tripletloss(tensor(features), paddle.to_tensor(labels), margin=margin)
    assert value(loss) == pytest.approx(np_triplet(features, margin), rel=1e-9, abs=1e-12)
    assert value(tripletloss(tensor(features), margin=margin)) == pytest.approx(value(loss))


@pytest.mark.parametrize("classes,per_class,dim", SHAPES)
@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_metric_losses_match_reference(classes, per_class, dim, margin):
    rng = np.random.default_rng(classes * 100 + per_class * 10 + dim)
    features = rng.normal(size=(classes * per_class, dim))
    labels = pk_labels(classes, per_class)
    f, y = tensor(features), paddle.to_tensor(labels)
    assert value(batch_hard_tripletloss(f, y, margin=margin)) == pytest.approx(np_batch_hard(features, labels, margin), rel=1e-9)
    assert value(quadrupletloss(f, y, margin=margin)) == pytest.approx(np_quadruplet(features, labels, margin), rel=1e-9)
    assert value(emlloss(f, y)) == pytest.approx(np_eml(features, labels), rel=1e-9)


def test_references_are_not_trivially_zero():
    # Guard for the test above: with these inputs the hinge losses are active.
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(8, 4)), pk_labels(4, 2)
    assert np_batch_hard(features, labels, 0.1) > 0.1
    assert np_quadruplet(features, labels, 0.1) > 0.1


@pytest.mark.parametrize("classes,dim", [(3, 4), (4, 16), (8, 4)])
@pytest.mark.parametrize("reg_lambda", [0.0, 0.01, 0.5])
def test_npairsloss_matches_reference(classes, dim, reg_lambda):
    rng = np.random.default_rng(classes + dim)
    features = rng.normal(size=(2 * classes, dim))
    labels = pk_labels(classes, 2)
    loss = npairsloss(tensor(features), paddle.to_tensor(labels), reg_lambda=reg_lambda)
    assert value(loss) == pytest.approx(np_npairs(features, labels, reg_lambda), rel=1e-9)


def test_npairsloss_repeated_class_uses_soft_targets():
    rng = np.random.default_rng(5)
    features = rng.normal(size=(8, 4))
    labels = np.array([1, 1, 2, 2, 1, 1, 3, 3])  # class 1 occurs in two pairs
    loss = npairsloss(tensor(features), paddle.to_tensor(labels), reg_lambda=0.01)
    assert value(loss) == pytest.approx(np_npairs(features, labels, 0.01), rel=1e-9)


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("margin,scale", [(0.15, 80.0), (0.5, 10.0), (1.2, 4.0)])
def test_arcmargin_loss_matches_reference(easy_margin, margin, scale):
    rng = np.random.default_rng(int(margin * 100))
    cosine = rng.uniform(-0.99, 0.99, size=(12, 5))
    labels = rng.integers(0, 5, size=12)
    loss = arcmargin_loss(tensor(cosine), paddle.to_tensor(labels), margin=margin, scale=scale,
                          easy_margin=easy_margin)
    assert value(loss) == pytest.approx(np_arcmargin(cosine, labels, margin, scale, easy_margin), rel=1e-6)


def test_arcmargin_fallback_branch_is_exercised():
    # cos(theta) below cos(pi - m): theta + m passes pi, so the fallback logit must be used.
    margin = 1.2
    cosine = np.array([[-0.9, 0.1, 0.2], [0.8, -0.5, 0.0]])
    labels = np.array([0, 0])
    assert -0.9 < math.cos(math.pi - margin)
    loss = arcmargin_loss(tensor(cosine), paddle.to_tensor(labels), margin=margin, scale=3.0)
    assert value(loss) == pytest.approx(np_arcmargin(cosine, labels, margin, 3.0, False), rel=1e-9)


def test_arcmargin_layer_matches_reference():
    paddle.seed(1)
    head = build("arcmargin", embedding_dim=6, num_classes=4, arc_margin=0.3, arc_scale=16.0)
    assert isinstance(head, paddle.nn.Layer)
    assert head.weight.shape == [6, 4]
    rng = np.random.default_rng(2)
    embedding = rng.normal(size=(8, 6)).astype("float32")
    labels = rng.integers(0, 4, size=8)
    cosine = np_normalize(embedding.astype(float)) @ np_normalize(head.weight.numpy().astype(float), axis=0)
    loss = head(paddle.to_tensor(embedding), paddle.to_tensor(labels))
    assert value(loss) == pytest.approx(np_arcmargin(cosine, labels, 0.3, 16.0, False), rel=1e-4)
    loss.backward()
    assert np.abs(head.weight.grad.numpy()).sum() > 0


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("logit_scale", [3.0, 60.0])  # 60: log-probabilities far below -64
def test_softmax_loss_matches_reference(smoothing, logit_scale):
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(8, 5)) * logit_scale, rng.integers(0, 5, size=8)
    loss = softmax_loss(tensor(logits), paddle.to_tensor(labels), label_smoothing=smoothing)
    assert value(loss) == pytest.approx(np_softmax_loss(logits, labels, smoothing), rel=1e-9)


# ---------------------------------------------------------------- gradients (float64, central differences)

GRADIENT_CASES = {
    "tripletloss": (triplet_labels(3, np.random.default_rng(0)),
                    lambda f, y: tripletloss(f, margin=0.5), lambda f, y: np_triplet(f, 0.5)),
    "batch_hard": (pk_labels(3, 2), lambda f, y: batch_hard_tripletloss(f, y, margin=0.5),
                   lambda f, y: np_batch_hard(f, y, 0.5)),
    "quadruplet": (pk_labels(2, 4), lambda f, y: quadrupletloss(f, y, margin=0.5),
                   lambda f, y: np_quadruplet(f, y, 0.5)),
    "eml": (pk_labels(3, 4), emlloss, np_eml),
    "npairs": (pk_labels(4, 2), lambda f, y: npairsloss(f, y, reg_lambda=0.1),
               lambda f, y: np_npairs(f, y, 0.1)),
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_gradient_matches_finite_differences(case):
    labels, paddle_loss, numpy_loss = GRADIENT_CASES[case]
    features = np.random.default_rng(4).normal(size=(len(labels), 4))
    y = paddle.to_tensor(labels)
    analytic, numeric = analytic_and_numeric_gradient(lambda f: paddle_loss(f, y),
                                                      lambda f: numpy_loss(f, labels), features)
    assert np.abs(numeric).max() > 1e-3, "the case must have a non-zero gradient"
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("easy_margin", [False, True])
def test_arcmargin_gradient_matches_finite_differences(easy_margin):
    rng = np.random.default_rng(6)
    cosine = rng.uniform(-0.95, 0.95, size=(6, 4))
    labels = rng.integers(0, 4, size=6)
    y = paddle.to_tensor(labels)
    analytic, numeric = analytic_and_numeric_gradient(
        lambda c: arcmargin_loss(c, y, margin=0.4, scale=5.0, easy_margin=easy_margin),
        lambda c: np_arcmargin(c, labels, 0.4, 5.0, easy_margin), cosine)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_softmax_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(7)
    logits, labels = rng.normal(size=(6, 4)), rng.integers(0, 4, size=6)
    y = paddle.to_tensor(labels)
    analytic, numeric = analytic_and_numeric_gradient(lambda x: softmax_loss(x, y, 0.2),
                                                      lambda x: np_softmax_loss(x, labels, 0.2), logits)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- label-based selection

@pytest.mark.parametrize("loss_fn", [lambda f, y: quadrupletloss(f, y, margin=0.3), emlloss,
                                     lambda f, y: batch_hard_tripletloss(f, y, margin=0.3)],
                         ids=["quadruplet", "eml", "batch_hard"])
@pytest.mark.parametrize("per_class", [2, 4])
def test_shuffled_batch_gives_the_pk_loss(loss_fn, per_class):
    rng = np.random.default_rng(per_class)
    features, labels = rng.normal(size=(4 * per_class, 16)), pk_labels(4, per_class)
    order = rng.permutation(len(labels))
    in_order = value(loss_fn(tensor(features), paddle.to_tensor(labels)))
    shuffled = value(loss_fn(tensor(features[order]), paddle.to_tensor(labels[order])))
    assert shuffled == pytest.approx(in_order, rel=1e-12)


def test_uneven_classes_follow_the_labels():
    # Not a P x K batch: classes of 3, 2 and 4 images, interleaved.
    rng = np.random.default_rng(8)
    labels = np.array([5, 9, 5, 2, 9, 2, 5, 2, 2])
    features = rng.normal(size=(len(labels), 4))
    y = paddle.to_tensor(labels)
    assert value(emlloss(tensor(features), y)) == pytest.approx(np_eml(features, labels), rel=1e-9)
    assert value(quadrupletloss(tensor(features), y, margin=0.2)) == pytest.approx(np_quadruplet(features, labels, 0.2))
    assert value(batch_hard_tripletloss(tensor(features), y, margin=0.2)) == pytest.approx(np_batch_hard(features, labels, 0.2))


# ---------------------------------------------------------------- bad batches and numerical range

@pytest.mark.parametrize("loss_fn,labels,message", [
    (emlloss, [0, 0, 1, 1, 2], "class 2 has a single image"),
    (emlloss, [4, 4, 4, 4], "no anchor has a negative"),
    (lambda f, y: batch_hard_tripletloss(f, y), [0, 1, 2, 3], "class 0 has a single image"),
    (lambda f, y: quadrupletloss(f, y), [0, 1, 2, 3], "no positive pair"),
    (lambda f, y: quadrupletloss(f, y), [1, 1, 1, 1], "no negative pair"),
    (lambda f, y: npairsloss(f, y), [0, 0, 1, 2], "class 1 has no positive"),
    (lambda f, y: npairsloss(f, y), [0, 0, 1], "must be even"),
    (lambda f, y: tripletloss(f, y), [0, 1, 2], "triplet 0"),
    (lambda f, y: tripletloss(f, y), [0, 0, 0, 1, 1, 2], "triplet 0"),
])
def test_bad_batch_raises_eagerly(loss_fn, labels, message):
    features = paddle.randn([len(labels), 4])
    with pytest.raises(UserError, match=message):
        loss_fn(features, paddle.to_tensor(np.array(labels)))


def test_batch_checks_on_host():
    losses.get("emlloss").check_batch(np.array([1, 2, 1, 2]))
    losses.get("quadrupletloss").check_batch(np.array([1, 1, 2, 3]))  # one positive pair is enough
    losses.get("tripletloss").check_batch(np.array([1, 1, 2]))
    assert losses.get("softmax").check_batch is None and losses.get("arcmargin").check_batch is None
    with pytest.raises(UserError, match="no positive"):
        losses.get("batchhardtripletloss").check_batch(np.array([1, 2, 3]))
    with pytest.raises(UserError, match="emlloss: class 3"):
        losses.get("emlloss").check_batch(np.array([1, 1, 3]))
    with pytest.raises(UserError, match="P x 2 batches"):
        losses.get("npairsloss").check_batch(np.array([1, 1, 2, 3]))


def test_emlloss_is_finite_for_large_distances():
    rng = np.random.default_rng(9)
    labels = pk_labels(3, 2)
    features = rng.normal(size=(6, 8)) * 100  # squared distances ~ 1e5, bias far above 20
    f = paddle.to_tensor(features.astype("float32"), stop_gradient=False)
    loss = emlloss(f, paddle.to_tensor(labels))
    loss.backward()
    assert np.isfinite(value(loss)) and np.all(np.isfinite(f.grad.numpy()))
    assert value(loss) == pytest.approx(np_eml(features, labels), rel=1e-4)
    # The regime where exp(bias) overflows float32 (bias > 89) is really exercised.
    biases = [p.max() - n.min() for p, n in (np_positives_negatives(features, labels, i) for i in range(6))]
    assert max(biases) > 89


# ---------------------------------------------------------------- registry and batch layout

def build(name, embedding_dim=4, num_classes=3, **flags):
    return losses.get(name).build(defaults("train", **flags), embedding_dim, num_classes)


def test_registry_builds_every_name():
    for name, spec in losses.LOSSES.items():
        assert spec.name == name
        loss = build(name)
        assert (loss is None) == (name == "softmax")
        assert spec.classifies == (name in ("softmax", "arcmargin", "cosface"))
    with pytest.raises(UserError, match="tripletloss, batchhardtripletloss"):
        losses.get("contrastive")


def test_registry_passes_the_flags_on():
    rng = np.random.default_rng(10)
    features, labels = rng.normal(size=(8, 4)), pk_labels(4, 2)
    hard = build("batchhardtripletloss", num_classes=4, margin=0.7)
    assert value(hard(tensor(features), paddle.to_tensor(labels))) == pytest.approx(np_batch_hard(features, labels, 0.7))
    npairs = build("npairsloss", num_classes=4, npairs_reg_lambda=0.3)
    assert value(npairs(tensor(features), paddle.to_tensor(labels))) == pytest.approx(np_npairs(features, labels, 0.3))


def test_batch_layouts():
    layouts = {name: (spec.layout, spec.samples_each_class(4)) for name, spec in losses.LOSSES.items()}
    assert layouts == {"tripletloss": ("triplet", 1), "batchhardtripletloss": ("pk", 4),
                       "quadrupletloss": ("pk", 4), "emlloss": ("pk", 4), "npairsloss": ("pk", 2),
                       "softmax": ("shuffle", 1), "arcmargin": ("shuffle", 1),
                       "rankedlistloss": ("pk", 4), "multisimilarityloss": ("pk", 4), "marginloss": ("pk", 4),
                       "cosface": ("shuffle", 1)}
    assert losses.get("npairsloss").samples_each_class(1) == 2
    with pytest.raises(UserError, match="samples_each_class >= 2"):
        losses.get("emlloss").samples_each_class(1)


# ---------------------------------------------------------------- static Program (PIR)



STATIC_CASES = [
    ("tripletloss", np.array([0, 0, 1, 2, 2, 1, 3, 3, 0]), lambda e, y: np_triplet(e, 0.1)),
    ("batchhardtripletloss", np.array([2, 0, 1, 0, 2, 1, 0, 1]), lambda e, y: np_batch_hard(e, y, 0.1)),
    ("quadrupletloss", pk_labels(2, 4), lambda e, y: np_quadruplet(e, y, 0.1)),
    ("emlloss", np.array([3, 1, 3, 1, 2, 2]), np_eml),
    ("npairsloss", pk_labels(4, 2), lambda e, y: np_npairs(e, y, 0.01)),
    ("arcmargin", np.array([0, 2, 1, 1, 0, 2]), None),
]


@pytest.mark.parametrize("name,labels,reference", STATIC_CASES, ids=[c[0] for c in STATIC_CASES])
def test_static_program_trains_one_step(name, labels, reference):
    inputs = np.random.default_rng(11).normal(size=(len(labels), 5)).astype("float32")
    first, embedding, _, parameters = static_loss_step(name, labels, inputs)
    if reference is not None:
        assert first == pytest.approx(reference(embedding, labels), rel=1e-4, abs=1e-6)
    else:
        assert "arcmargin_weights" in parameters
    assert paddle.in_dynamic_mode()


def test_softmax_loss_in_static_program():
    logits = np.random.default_rng(12).normal(size=(6, 3)).astype("float32")
    labels = np.array([0, 2, 1, 1, 0, 2])
    with static_mode():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 3], "float32")
            y = paddle.static.data("y", [None], "int64")
            loss = softmax_loss(x, y, label_smoothing=0.1)
        out, = paddle.static.Executor(paddle.CPUPlace()).run(main, feed={"x": logits, "y": labels}, fetch_list=[loss])
    assert out.item() == pytest.approx(np_softmax_loss(logits.astype(float), labels, 0.1), rel=1e-5)
