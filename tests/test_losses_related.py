"""Ranked list, multi-similarity, margin (distance-weighted sampling) and CosFace losses against numpy loops."""
import contextlib
import math

import numpy as np
import paddle
import pytest
from numeric import numeric_gradient
from paddle_modes import static_loss_step, static_mode

import losses
from cli.args import defaults
from losses.cosfaceloss import CosFaceLoss, cosface_loss
from losses.marginloss import MarginLoss, sample_negatives
from losses.multisimilarityloss import multisimilarityloss
from losses.rankedlistloss import rankedlistloss
from utility.errors import UserError

SHAPES = [(3, 2, 4), (4, 2, 16), (2, 4, 4), (4, 4, 16), (3, 4, 4), (5, 3, 8)]  # (P classes, K per class, D)
RLL_DEFAULTS = dict(alpha=1.2, margin=0.4, temperature=10.0, balance=1.0)
MS_DEFAULTS = dict(alpha=2.0, beta=50.0, base=0.5, epsilon=0.1)
MARGIN_DEFAULTS = dict(alpha=0.2, cutoff=0.5)


# ---------------------------------------------------------------- numpy references (loops, not masks)

def np_normalize(x, axis=1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def np_distance(a, b):
    return math.sqrt(float(np.sum((a - b) ** 2)))


def np_rll(features, labels, alpha=1.2, margin=0.4, temperature=10.0, balance=1.0, weights_at=None):
    """Ranked list loss; the negative weights come from `weights_at` (default: `features` themselves).

    Evaluating it at perturbed features with weights_at fixed gives the derivative with the
    weights held constant, which is what the loss's gradient is.
    """
    f = np_normalize(features)
    fw = f if weights_at is None else np_normalize(weights_at)
    terms = []
    for i in range(len(labels)):
        positive_costs, negative_costs, negative_weights = [], [], []
        for j in range(len(labels)):
            d = np_distance(f[i], f[j])
            if j != i and labels[j] == labels[i] and d > alpha - margin:
                positive_costs.append(d - (alpha - margin))
            elif labels[j] != labels[i] and d < alpha:
                negative_costs.append(alpha - d)
                negative_weights.append(math.exp(temperature * (alpha - np_distance(fw[i], fw[j]))))
        positive_loss = np.mean(positive_costs) if positive_costs else 0.0
        negative_loss = (np.dot(negative_weights, negative_costs) / np.sum(negative_weights)
                         if negative_costs else 0.0)
        terms.append(positive_loss + balance * negative_loss)
    return np.mean(terms)


def np_ms(features, labels, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1):
    """Multi-similarity loss by loops; log(1 + sum exp(x)) is written as a logsumexp so large beta cannot overflow."""
    def log1p_sum_exp(xs):
        top = max(0.0, max(xs))
        return top + math.log(math.exp(-top) + sum(math.exp(x - top) for x in xs))

    f = np_normalize(features)
    total = 0.0
    for i in range(len(labels)):
        positives = [float(f[i] @ f[j]) for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        negatives = [float(f[i] @ f[k]) for k in range(len(labels)) if labels[k] != labels[i]]
        mined_negatives = [s for s in negatives if s + epsilon > min(positives)]
        mined_positives = [s for s in positives if s - epsilon < max(negatives)]
        if mined_negatives and mined_positives:
            total += log1p_sum_exp([-alpha * (s - base) for s in mined_positives]) / alpha
            total += log1p_sum_exp([beta * (s - base) for s in mined_negatives]) / beta
    return total / len(labels)


def np_log_weight(d, dim, cutoff):
    d = max(d, cutoff)
    return (2 - dim) * math.log(d) - 0.5 * (dim - 3) * math.log(max(1 - d * d / 4, 1e-8))


def np_sampled_negatives(features, labels, noise, cutoff=0.5):
    """{anchor: [negatives]}: per row, the #positives negatives of largest log weight + Gumbel noise."""
    f = np_normalize(features)
    chosen = {}
    for i in range(len(labels)):
        positives = [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        negatives = [k for k in range(len(labels)) if labels[k] != labels[i]]
        score = {k: np_log_weight(np_distance(f[i], f[k]), f.shape[1], cutoff) - math.log(-math.log(noise[i, k]))
                 for k in negatives}
        chosen[i] = sorted(negatives, key=lambda k: -score[k])[:len(positives)]
    return chosen


def np_margin(features, labels, noise, beta, alpha=0.2, cutoff=0.5, per_class=True, weights_at=None):
    """Margin loss over all positive pairs and the sampled negatives (drawn at `weights_at`, default features)."""
    f = np_normalize(features)
    chosen = np_sampled_negatives(features if weights_at is None else weights_at, labels, noise, cutoff)
    pair_losses = []
    for i in range(len(labels)):
        b = beta[labels[i]] if per_class else beta[0]
        for j in range(len(labels)):
            if j != i and labels[j] == labels[i]:
                pair_losses.append(max(alpha + np_distance(f[i], f[j]) - b, 0.0))
        for k in chosen[i]:
            pair_losses.append(max(alpha + b - np_distance(f[i], f[k]), 0.0))
    active = [x for x in pair_losses if x > 0]
    return sum(active) / len(active) if active else 0.0


def np_log_softmax(row):
    shifted = row - row.max()
    return shifted - math.log(np.sum(np.exp(shifted)))


def np_cosface(cosine, labels, margin=0.35, scale=30.0):
    terms = []
    for row, label in zip(cosine, labels):
        logits = scale * row.copy()
        logits[label] = scale * (row[label] - margin)
        terms.append(-np_log_softmax(logits)[label])
    return np.mean(terms)


# ---------------------------------------------------------------- helpers

def pk_labels(classes, per_class, spread=True):
    ids = np.arange(classes) * 7 + 3 if spread else np.arange(classes)  # spread: arbitrary, non-contiguous
    return np.repeat(ids, per_class)


def tensor(array):
    return paddle.to_tensor(array, stop_gradient=False)


def value(loss):
    assert loss.shape == [], "a loss must be a scalar tensor"
    return loss.item()


def uniform_noise(rng, size):
    return rng.uniform(1e-6, 1 - 1e-6, size=(size, size))


@contextlib.contextmanager
def default_dtype(dtype):
    """Parameters of layers built inside are of `dtype` (float64 for finite differences)."""
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        yield
    finally:
        paddle.set_default_dtype(previous)


def margin_layer(dim, num_classes, beta=1.2, per_class=True, **kwargs):
    with default_dtype("float64"):
        return MarginLoss(dim, num_classes, beta=beta, per_class=per_class, **kwargs)


def build(name, embedding_dim=4, num_classes=3, **flags):
    return losses.get(name).build(defaults("train", **flags), embedding_dim, num_classes)


# ---------------------------------------------------------------- forward values at the defaults and beyond

@pytest.mark.parametrize("classes,per_class,dim", SHAPES)
def test_rankedlistloss_matches_reference(classes, per_class, dim):
    rng = np.random.default_rng(classes * 100 + per_class * 10 + dim)
    features, labels = rng.normal(size=(classes * per_class, dim)), pk_labels(classes, per_class)
    loss = build("rankedlistloss")(tensor(features), paddle.to_tensor(labels))
    assert value(loss) == pytest.approx(np_rll(features, labels), rel=1e-4)
    assert value(rankedlistloss(tensor(features), paddle.to_tensor(labels))) == pytest.approx(value(loss), rel=1e-12)


@pytest.mark.parametrize("settings", [dict(alpha=1.0, margin=0.2, temperature=3.0, balance=0.5),
                                      dict(alpha=1.6, margin=0.8, temperature=30.0, balance=2.0)])
def test_rankedlistloss_other_settings(settings):
    rng = np.random.default_rng(1)
    features, labels = rng.normal(size=(12, 6)), pk_labels(4, 3)
    loss = rankedlistloss(tensor(features), paddle.to_tensor(labels), **settings)
    assert value(loss) == pytest.approx(np_rll(features, labels, **settings), rel=1e-9)
    flags = dict(rll_alpha=settings["alpha"], rll_margin=settings["margin"],
                 rll_temperature=settings["temperature"], rll_lambda=settings["balance"])
    assert value(build("rankedlistloss", **flags)(tensor(features), paddle.to_tensor(labels))) == pytest.approx(value(loss))


@pytest.mark.parametrize("classes,per_class,dim", SHAPES)
def test_multisimilarityloss_matches_reference(classes, per_class, dim):
    rng = np.random.default_rng(classes * 100 + per_class * 10 + dim)
    features, labels = rng.normal(size=(classes * per_class, dim)), pk_labels(classes, per_class)
    loss = build("multisimilarityloss")(tensor(features), paddle.to_tensor(labels))
    assert value(loss) == pytest.approx(np_ms(features, labels), rel=1e-4)


@pytest.mark.parametrize("settings", [dict(alpha=1.0, beta=10.0, base=0.3, epsilon=0.0),
                                      dict(alpha=4.0, beta=80.0, base=0.7, epsilon=0.5)])
def test_multisimilarityloss_other_settings(settings):
    rng = np.random.default_rng(2)
    features, labels = rng.normal(size=(12, 6)), pk_labels(4, 3)
    loss = multisimilarityloss(tensor(features), paddle.to_tensor(labels), **settings)
    assert value(loss) == pytest.approx(np_ms(features, labels, **settings), rel=1e-9)
    flags = dict(ms_alpha=settings["alpha"], ms_beta=settings["beta"], ms_lambda=settings["base"],
                 ms_epsilon=settings["epsilon"])
    assert value(build("multisimilarityloss", **flags)(tensor(features), paddle.to_tensor(labels))) == pytest.approx(value(loss))


def test_multisimilarityloss_skips_anchors_without_mined_pairs():
    # Two tight, far-apart classes: no negative is more similar than the least similar positive
    # minus epsilon, so nothing is mined and the loss is exactly 0 (not log 2 terms).
    features = np.array([[1.0, 0.0], [0.99, 0.05], [-1.0, 0.0], [-0.99, 0.05]])
    labels = np.array([0, 0, 1, 1])
    assert value(multisimilarityloss(tensor(features), paddle.to_tensor(labels))) == 0.0
    assert np_ms(features, labels) == 0.0


def test_multisimilarityloss_is_finite_at_large_scales():
    # beta * (S - lambda) up to 500 * 0.5 = 250: exp() of that overflows float32 (and of 1000, float64).
    rng = np.random.default_rng(3)
    features, labels = rng.normal(size=(8, 3)), pk_labels(2, 4)
    f = paddle.to_tensor(features.astype("float32"), stop_gradient=False)
    loss = multisimilarityloss(f, paddle.to_tensor(labels), alpha=40.0, beta=2000.0)
    loss.backward()
    assert np.isfinite(value(loss)) and np.all(np.isfinite(f.grad.numpy()))
    assert value(loss) == pytest.approx(np_ms(features, labels, 40.0, 2000.0), rel=1e-4)



@pytest.mark.parametrize("classes,per_class,dim", SHAPES)
def test_marginloss_matches_reference_with_given_noise(classes, per_class, dim):
    rng = np.random.default_rng(classes * 100 + per_class * 10 + dim)
    labels = pk_labels(classes, per_class, spread=False)
    features, noise = rng.normal(size=(len(labels), dim)), uniform_noise(rng, len(labels))
    paddle.seed(0)
    layer = build("marginloss", embedding_dim=dim, num_classes=classes)
    loss = layer(paddle.to_tensor(features.astype("float32")), paddle.to_tensor(labels),
                 paddle.to_tensor(noise.astype("float32")))
    assert value(loss) == pytest.approx(np_margin(features, labels, noise, np.full(classes, 1.2)), rel=1e-4)


@pytest.mark.parametrize("per_class", [True, False])
def test_marginloss_other_settings(per_class):
    rng = np.random.default_rng(4)
    labels = np.array([0, 2, 1, 0, 2, 1, 0, 2, 1, 3, 3, 3])
    features, noise = rng.normal(size=(12, 6)), uniform_noise(rng, 12)
    beta = np.array([0.9, 1.3, 1.1, 1.0]) if per_class else np.array([0.8])
    layer = margin_layer(6, 4, per_class=per_class, alpha=0.35, cutoff=0.9)
    layer.beta.set_value(beta)
    loss = layer(tensor(features), paddle.to_tensor(labels), paddle.to_tensor(noise))
    reference = np_margin(features, labels, noise, beta, alpha=0.35, cutoff=0.9, per_class=per_class)
    assert reference > 0.1
    assert value(loss) == pytest.approx(reference, rel=1e-9)
    flags = dict(margin_alpha=0.35, margin_cutoff=0.9, margin_beta=0.8, margin_beta_per_class=False)
    if not per_class:
        with default_dtype("float64"):
            built = build("marginloss", embedding_dim=6, num_classes=4, **flags)
        assert value(built(tensor(features), paddle.to_tensor(labels), paddle.to_tensor(noise))) == pytest.approx(reference)


def test_marginloss_is_zero_without_active_pairs():
    rng = np.random.default_rng(5)
    labels = pk_labels(2, 2, spread=False)
    features, noise = rng.normal(size=(4, 4)), uniform_noise(rng, 4)
    y, u = paddle.to_tensor(labels), paddle.to_tensor(noise)
    # beta 3 is beyond every distance (at most 2): positives cost 0, the drawn negatives 3 - d > 0.
    assert value(margin_layer(4, 2, beta=3.0, per_class=False, alpha=0.0)(tensor(features), y, u)) > 0
    # With alpha -3 every pair loss is clipped to 0: the mean over no active pairs is 0, not NaN.
    assert value(margin_layer(4, 2, beta=3.0, per_class=False, alpha=-3.0)(tensor(features), y, u)) == 0.0


def test_marginloss_draws_without_noise():
    rng = np.random.default_rng(6)
    labels = pk_labels(3, 2, spread=False)
    layer = margin_layer(4, 3)
    loss = layer(tensor(rng.normal(size=(6, 4))), paddle.to_tensor(labels))
    assert np.isfinite(value(loss)) and value(loss) > 0


@pytest.mark.parametrize("cosine_seed", [0, 1])
@pytest.mark.parametrize("margin,scale", [(0.35, 30.0), (0.1, 5.0), (0.6, 64.0)])
def test_cosface_loss_matches_reference(cosine_seed, margin, scale):
    rng = np.random.default_rng(cosine_seed)
    cosine, labels = rng.uniform(-0.99, 0.99, size=(12, 5)), rng.integers(0, 5, size=12)
    loss = cosface_loss(tensor(cosine), paddle.to_tensor(labels), margin=margin, scale=scale)
    assert value(loss) == pytest.approx(np_cosface(cosine, labels, margin, scale), rel=1e-9)


@pytest.mark.parametrize("flags,margin,scale", [({}, 0.35, 30.0), (dict(cos_margin=0.2, cos_scale=16.0), 0.2, 16.0)])
def test_cosface_layer_matches_reference(flags, margin, scale):
    paddle.seed(1)
    head = build("cosface", embedding_dim=6, num_classes=4, **flags)
    assert isinstance(head, CosFaceLoss) and head.weight.shape == [6, 4]
    rng = np.random.default_rng(2)
    embedding, labels = rng.normal(size=(8, 6)).astype("float32"), rng.integers(0, 4, size=8)
    cosine = np_normalize(embedding.astype(float)) @ np_normalize(head.weight.numpy().astype(float), axis=0)
    loss = head(paddle.to_tensor(embedding), paddle.to_tensor(labels))
    assert value(loss) == pytest.approx(np_cosface(cosine, labels, margin, scale), rel=1e-4)
    loss.backward()
    assert np.abs(head.weight.grad.numpy()).sum() > 0


def test_references_are_not_trivially_zero():
    # Guard for the tests above: at the defaults both terms of each loss are active.
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(12, 4)), pk_labels(3, 4)
    assert np_rll(features, labels, balance=0.0) > 0.05 and np_rll(features, labels) - np_rll(features, labels, balance=0.0) > 0.05
    assert np_ms(features, labels) > 0.05
    assert np_margin(features, pk_labels(3, 4, spread=False), uniform_noise(rng, 12), np.full(3, 1.2)) > 0.05


# ---------------------------------------------------------------- distance-weighted sampling

def test_sampling_draws_one_distinct_negative_per_positive():
    rng = np.random.default_rng(7)
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])  # 3, 1 and 2 positives per row; 5, 7 and 6 negatives
    features, noise = rng.normal(size=(9, 4)), uniform_noise(rng, 9)
    distances = paddle.to_tensor(np.array([[np_distance(a, b) for b in np_normalize(features)] for a in np_normalize(features)]))
    chosen = sample_negatives(distances, paddle.to_tensor(labels), paddle.to_tensor(noise), 4, 0.5).numpy()
    expected = np_sampled_negatives(features, labels, noise)
    for i in range(9):
        assert np.flatnonzero(chosen[i]).tolist() == sorted(expected[i])
        assert chosen[i].sum() == np.sum(labels == labels[i]) - 1
        assert not np.any(chosen[i] & (labels == labels[i])), "only negatives are drawn"


def test_sampled_negatives_follow_the_distance_weighting():
    """With one positive per row, each row draws one negative with probability ∝ 1 / q(d), d clipped at the cutoff.

    Frequencies over many seeded draws are compared with those probabilities through a chi-square
    statistic (normal approximation, 6 standard deviations); the uniform choice is rejected by it.
    """
    dim, cutoff, draws = 3, 0.5, 3000
    rng = np.random.default_rng(8)
    labels = pk_labels(4, 2, spread=False)
    features = np_normalize(rng.normal(size=(8, dim)))
    features[2] = np_normalize(features[0] + 0.05 * rng.normal(size=dim)[None])[0]  # one negative below the cutoff
    d = np.array([[np_distance(a, b) for b in features] for a in features])
    negative = labels[:, None] != labels[None, :]
    weights = np.where(negative, np.exp([[np_log_weight(x, dim, cutoff) for x in row] for row in d]), 0.0)
    probabilities = weights / weights.sum(axis=1, keepdims=True)

    distances, y = paddle.to_tensor(d), paddle.to_tensor(labels)
    counts = np.zeros_like(probabilities)
    noise_rng = np.random.default_rng(9)
    for _ in range(draws):
        noise = paddle.to_tensor(noise_rng.uniform(size=(8, 8)))
        counts += sample_negatives(distances, y, noise, dim, cutoff).numpy()
    assert np.all(counts.sum(axis=1) == draws)

    def chi_square_z(p):
        expected = draws * p[negative]
        statistic = np.sum((counts[negative] - expected) ** 2 / expected)
        dof = negative.sum() - len(labels)
        return (statistic - dof) / math.sqrt(2 * dof)

    assert abs(chi_square_z(probabilities)) < 6
    uniform = negative / negative.sum(axis=1, keepdims=True)
    assert chi_square_z(uniform) > 30, "the test must be able to tell the weighting from a uniform choice"


# ---------------------------------------------------------------- gradients (float64, central differences)

def assert_gradient(paddle_loss, numpy_loss, x):
    x_tensor = tensor(x)
    paddle_loss(x_tensor).backward()
    numeric = numeric_gradient(numpy_loss, x)
    assert np.abs(numeric).max() > 1e-3, "the case must have a non-zero gradient"
    np.testing.assert_allclose(x_tensor.grad.numpy(), numeric, rtol=1e-5, atol=1e-7)


def test_rankedlistloss_gradient_holds_the_weights_constant():
    labels = pk_labels(3, 4)
    features = np.random.default_rng(10).normal(size=(12, 4))
    y = paddle.to_tensor(labels)
    settings = dict(alpha=1.2, margin=0.4, temperature=3.0, balance=1.0)
    assert_gradient(lambda f: rankedlistloss(f, y, **settings),
                    lambda f: np_rll(f, labels, **settings, weights_at=features), features)
    # The weights really matter: differentiating them too would give another gradient.
    x_tensor = tensor(features)
    rankedlistloss(x_tensor, y, **settings).backward()
    full = numeric_gradient(lambda f: np_rll(f, labels, **settings), features)
    assert np.abs(full - x_tensor.grad.numpy()).max() > 1e-3


def test_rankedlistloss_weights_are_constant_in_static_programs_too():
    # detach() must cut the weights out of the gradient in a PIR Program as it does eagerly.
    labels = pk_labels(3, 4)
    features = np.random.default_rng(10).normal(size=(12, 4))
    x_tensor = tensor(features)
    rankedlistloss(x_tensor, paddle.to_tensor(labels), temperature=3.0).backward()
    with static_mode():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 4], "float64")
            x.stop_gradient = False
            y = paddle.static.data("y", [None], "int64")
            gradient, = paddle.static.gradients([rankedlistloss(x, y, temperature=3.0)], [x])
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        static_gradient, = exe.run(main, feed={"x": features, "y": labels}, fetch_list=[gradient])
    np.testing.assert_allclose(static_gradient, x_tensor.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_multisimilarityloss_gradient_matches_finite_differences():
    labels = pk_labels(3, 4)
    features = np.random.default_rng(11).normal(size=(12, 4))
    y = paddle.to_tensor(labels)
    settings = dict(alpha=2.0, beta=10.0, base=0.5, epsilon=0.1)
    assert_gradient(lambda f: multisimilarityloss(f, y, **settings), lambda f: np_ms(f, labels, **settings), features)


def test_marginloss_gradient_matches_finite_differences():
    labels = pk_labels(3, 3, spread=False)
    rng = np.random.default_rng(12)
    features, noise = rng.normal(size=(9, 4)), uniform_noise(rng, 9)
    beta = np.array([1.1, 1.2, 1.3])
    layer = margin_layer(4, 3)
    layer.beta.set_value(beta)
    y, u = paddle.to_tensor(labels), paddle.to_tensor(noise)
    assert_gradient(lambda f: layer(f, y, u), lambda f: np_margin(f, labels, noise, beta, weights_at=features), features)
    # beta is learned: its gradient is the derivative of the loss in beta.
    layer.clear_gradients()
    layer(paddle.to_tensor(features), y, u).backward()
    numeric = numeric_gradient(lambda b: np_margin(features, labels, noise, b), beta)
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(layer.beta.grad.numpy(), numeric, rtol=1e-5, atol=1e-7)


def test_cosface_gradient_matches_finite_differences():
    rng = np.random.default_rng(13)
    cosine, labels = rng.uniform(-0.95, 0.95, size=(6, 4)), rng.integers(0, 4, size=6)
    y = paddle.to_tensor(labels)
    assert_gradient(lambda c: cosface_loss(c, y, margin=0.35, scale=5.0),
                    lambda c: np_cosface(c, labels, 0.35, 5.0), cosine)


# ---------------------------------------------------------------- label-based selection

@pytest.mark.parametrize("name", ["rankedlistloss", "multisimilarityloss", "marginloss"])
@pytest.mark.parametrize("per_class", [2, 4])
def test_shuffled_batch_gives_the_pk_loss(name, per_class):
    rng = np.random.default_rng(per_class)
    labels = pk_labels(4, per_class, spread=False)
    features, noise = rng.normal(size=(len(labels), 16)), uniform_noise(rng, len(labels))
    order = rng.permutation(len(labels))
    if name == "marginloss":
        layer = margin_layer(16, 4)
        in_order = value(layer(tensor(features), paddle.to_tensor(labels), paddle.to_tensor(noise)))
        shuffled = value(layer(tensor(features[order]), paddle.to_tensor(labels[order]),
                               paddle.to_tensor(noise[order][:, order])))  # each pair keeps its noise
    else:
        loss_fn = build(name)
        in_order = value(loss_fn(tensor(features), paddle.to_tensor(labels)))
        shuffled = value(loss_fn(tensor(features[order]), paddle.to_tensor(labels[order])))
    assert in_order > 0
    assert shuffled == pytest.approx(in_order, rel=1e-12)


def test_uneven_classes_follow_the_labels():
    # Not a P x K batch: classes of 3, 2 and 4 images, interleaved.
    rng = np.random.default_rng(14)
    labels = np.array([2, 1, 2, 0, 1, 0, 2, 0, 0])
    features, noise = rng.normal(size=(9, 4)), uniform_noise(rng, 9)
    y = paddle.to_tensor(labels)
    assert value(rankedlistloss(tensor(features), y)) == pytest.approx(np_rll(features, labels), rel=1e-9)
    assert value(multisimilarityloss(tensor(features), y)) == pytest.approx(np_ms(features, labels), rel=1e-9)
    assert value(margin_layer(4, 3)(tensor(features), y, paddle.to_tensor(noise))) == pytest.approx(
        np_margin(features, labels, noise, np.full(3, 1.2)), rel=1e-9)


# ---------------------------------------------------------------- bad batches

@pytest.mark.parametrize("name,labels,message", [
    ("rankedlistloss", [0, 0, 1, 1, 2], "rankedlistloss: class 2 has a single image"),
    ("rankedlistloss", [1, 1, 1, 1], "no anchor has a negative"),
    ("multisimilarityloss", [0, 1, 2, 2], "multisimilarityloss: class 0 has a single image"),
    ("multisimilarityloss", [2, 2, 2], "no anchor has a negative"),
    ("marginloss", [0, 0, 1], "marginloss: class 1 has a single image"),
    ("marginloss", [0, 0, 0, 0], "no anchor has a negative"),
    ("marginloss", [0, 0, 5, 5], "class id 5 has no beta"),
])
def test_bad_batch_raises_eagerly(name, labels, message):
    features = paddle.randn([len(labels), 4])
    with pytest.raises(UserError, match=message):
        build(name)(features, paddle.to_tensor(np.array(labels)))


def test_batch_checks_on_host():
    for name in ("rankedlistloss", "multisimilarityloss", "marginloss"):
        losses.get(name).check_batch(np.array([7, 9, 7, 9]))
        with pytest.raises(UserError, match=f"{name}: class 3 has a single image"):
            losses.get(name).check_batch(np.array([1, 1, 3]))
    assert losses.get("cosface").check_batch is None
    # A shared beta takes any class ids.
    build("marginloss", margin_beta_per_class=False)(paddle.randn([4, 4]), paddle.to_tensor(np.array([0, 0, 5, 5])))


# ---------------------------------------------------------------- registry

NEW_LOSSES = {"rankedlistloss": ("pk", False), "multisimilarityloss": ("pk", False),
              "marginloss": ("pk", False), "cosface": ("shuffle", True)}


@pytest.mark.parametrize("name", sorted(NEW_LOSSES))
def test_registry_builds_from_the_default_flags(name):
    spec = losses.get(name)
    assert (spec.name, (spec.layout, spec.classifies)) == (name, NEW_LOSSES[name])
    assert spec.summary
    loss = spec.build(defaults("train"), 4, 3)
    assert callable(loss)
    assert isinstance(loss, paddle.nn.Layer) == (name in ("marginloss", "cosface"))
    for flag in {"rankedlistloss": ["rll_alpha", "rll_margin", "rll_temperature", "rll_lambda"],
                 "multisimilarityloss": ["ms_alpha", "ms_beta", "ms_lambda", "ms_epsilon"],
                 "marginloss": ["margin_alpha", "margin_beta", "margin_beta_per_class", "margin_cutoff"],
                 "cosface": ["cos_scale", "cos_margin"]}[name]:
        assert hasattr(defaults("train"), flag) and hasattr(defaults("eval"), flag)


def test_flag_defaults():
    options = defaults("train")
    assert (options.rll_alpha, options.rll_margin, options.rll_temperature, options.rll_lambda) == (1.2, 0.4, 10.0, 1.0)
    assert (options.ms_alpha, options.ms_beta, options.ms_lambda, options.ms_epsilon) == (2.0, 50.0, 0.5, 0.1)
    assert (options.margin_alpha, options.margin_beta, options.margin_beta_per_class, options.margin_cutoff) == (0.2, 1.2, True, 0.5)
    assert (options.cos_scale, options.cos_margin) == (30.0, 0.35)


def test_marginloss_beta_shapes():
    assert build("marginloss", num_classes=5).beta.shape == [5]
    assert build("marginloss", num_classes=5, margin_beta_per_class=False).beta.shape == [1]
    np.testing.assert_allclose(build("marginloss", margin_beta=0.9).beta.numpy(), 0.9)


def test_marginloss_without_training_classes_uses_the_fixed_beta():
    # eval.py's test_loss builds the metric loss with num_classes 0 (held-out classes), in static mode,
    # and runs it eagerly: no parameter then, the flag value of beta instead.
    rng = np.random.default_rng(18)
    labels = np.array([101, 104, 101, 104, 102, 102])
    features, noise = rng.normal(size=(6, 4)), uniform_noise(rng, 6)
    with static_mode():
        loss_fn = build("marginloss", num_classes=0, margin_beta=1.0)
    assert not isinstance(loss_fn, paddle.nn.Layer)
    loss = loss_fn(tensor(features), paddle.to_tensor(labels), paddle.to_tensor(noise))
    assert value(loss) == pytest.approx(np_margin(features, labels, noise, [1.0], per_class=False), rel=1e-9)


def test_eval_test_loss_runs_for_the_new_losses():
    import eval as eval_script

    rng = np.random.default_rng(19)
    labels = np.repeat(np.array([101, 102, 103, 104]), 5)
    features = rng.normal(size=(20, 8)).astype("float32")
    with static_mode():
        for name in ("rankedlistloss", "multisimilarityloss", "marginloss"):
            result = eval_script.test_loss(defaults("eval", loss_name=name, samples_each_class=4,
                                                    test_batch_size=8), features, labels)
            assert np.isfinite(result) and result > 0, name
        assert math.isnan(eval_script.test_loss(defaults("eval", loss_name="cosface"), features, labels))


# ---------------------------------------------------------------- static Program (PIR)

STATIC_CASES = [
    ("rankedlistloss", np.array([2, 0, 1, 0, 2, 1, 0, 1, 2]), lambda e, y, u: np_rll(e, y)),
    ("multisimilarityloss", np.array([3, 1, 3, 1, 2, 2]), lambda e, y, u: np_ms(e, y)),
    ("marginloss", np.array([2, 0, 1, 0, 2, 1, 0, 1]), lambda e, y, u: np_margin(e, y, u, np.full(3, 1.2))),
    ("cosface", np.array([0, 2, 1, 1, 0, 2]), None),
]


@pytest.mark.parametrize("name,labels,reference", STATIC_CASES, ids=[c[0] for c in STATIC_CASES])
def test_static_program_trains_one_step(name, labels, reference):
    rng = np.random.default_rng(15)
    inputs = rng.normal(size=(len(labels), 5)).astype("float32")
    noise = uniform_noise(rng, len(labels)).astype("float32")  # fed to marginloss, as the engine does
    first, embedding, _, parameters = static_loss_step(name, labels, inputs, noise)
    if reference is not None:
        assert first > 0
        assert first == pytest.approx(reference(embedding, labels, noise.astype(float)), rel=1e-4, abs=1e-6)
    if name in ("marginloss", "cosface"):
        assert {"marginloss": "marginloss_beta", "cosface": "cosface_weights"}[name] in parameters
    assert paddle.in_dynamic_mode()


def test_static_marginloss_draws_its_own_noise_and_learns_beta():
    labels = np.array([0, 1, 2, 0, 1, 2])
    inputs = np.random.default_rng(16).normal(size=(6, 5)).astype("float32")
    with static_mode():
        paddle.seed(3)
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 5], "float32")
            y = paddle.static.data("y", [None], "int64")
            loss = build("marginloss")(paddle.nn.Linear(5, 4)(x), y)
            paddle.optimizer.Momentum(learning_rate=0.5, momentum=0.9,
                                      weight_decay=paddle.regularizer.L2Decay(1.0)).minimize(loss)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        scope = paddle.static.global_scope()
        values = [exe.run(main, feed={"x": inputs, "y": labels}, fetch_list=[loss])[0].item() for _ in range(3)]
        beta = np.array(scope.find_var("marginloss_beta").get_tensor())
    assert all(np.isfinite(values)) and len(set(values)) > 1
    assert beta.shape == (3,) and np.any(np.abs(beta - 1.2) > 1e-4), "beta must be learned"


def test_marginloss_beta_is_not_weight_decayed():
    # Every pair loss is 0 (alpha -5), so beta's gradient is 0: only weight decay could move it.
    labels = np.array([0, 1, 2, 0, 1, 2])
    inputs = np.random.default_rng(17).normal(size=(6, 5)).astype("float32")
    with static_mode():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 5], "float32")
            y = paddle.static.data("y", [None], "int64")
            linear = paddle.nn.Linear(5, 4)
            loss = build("marginloss", margin_alpha=-5.0)(linear(x), y) + 0.0 * paddle.sum(linear.weight)
            paddle.optimizer.Momentum(learning_rate=0.5, momentum=0.9,
                                      weight_decay=paddle.regularizer.L2Decay(0.5)).minimize(loss)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        scope = paddle.static.global_scope()
        weight_before = np.array(scope.find_var(linear.weight.name).get_tensor())
        exe.run(main, feed={"x": inputs, "y": labels}, fetch_list=[loss])
        beta = np.array(scope.find_var("marginloss_beta").get_tensor())
        weight_after = np.array(scope.find_var(linear.weight.name).get_tensor())
    assert np.any(weight_after != weight_before), "the decay is on for the other parameters"
    np.testing.assert_array_equal(beta, np.full(3, 1.2, dtype=np.float32))


def test_margin_loss_resumes_exactly_with_noise_fed_by_the_trainer(tiny_dataset, tmp_path, capsys):
    import json
    import os

    import train

    data_dir, train_list, val_list = tiny_dataset
    common = [f"--data_dir={data_dir}", f"--train_list={train_list}", f"--val_list={val_list}", "--model=ResNet18",
              "--image_shape=3,32,32", "--train_batch_size=12", "--loss_name=marginloss", "--samples_each_class=3",
              "--total_iter_num=4", "--save_iter_step=2", "--test_iter_step=100", "--num_workers=0",
              "--display_iter_step=1"]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train.main(common + [f"--model_save_dir={straight}"])
    train.main(common + [f"--model_save_dir={resumed}", f"--checkpoint={straight}/ResNet18/2"])
    capsys.readouterr()

    def losses_of(folder):
        with open(os.path.join(folder, "log.jsonl")) as f:
            return {r["iter"]: r["loss_metric"] for r in map(json.loads, f) if "loss_metric" in r}
    first, second = losses_of(straight), losses_of(resumed)
    assert sorted(second) == [2, 3]
    for iteration in (2, 3):
        assert second[iteration] == pytest.approx(first[iteration], rel=1e-5, abs=1e-6)


def test_test_loss_of_a_sampling_loss_is_the_same_every_run():
    import eval as eval_script
    from cli.args import defaults

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 4)
    features = rng.normal(size=(16, 8)).astype("float32")
    config = defaults("eval", loss_name="marginloss", samples_each_class=4, test_batch_size=16)
    assert eval_script.test_loss(config, features, labels) == eval_script.test_loss(config, features, labels)
