"""marginloss: distance-weighted sampling and the learned beta against numpy loops, eagerly, in static
Programs, through eval.py's test_loss and across a resumed training run."""
import math

import numpy as np
import paddle
import pytest
from loss_checks import (SHAPES, assert_gradient, assert_shuffle_invariant, default_dtype, np_distance, np_log_weight,
                         np_margin, np_normalize, np_sampled_negatives, pk_labels, tensor, uniform_noise, value)
from numeric import numeric_gradient
from paddle_modes import static_loss_step, static_mode

import losses
from cli.args import defaults
from losses.marginloss import MarginParams, margin_loss, sample_negatives
from utility.errors import UserError

DEFAULT = MarginParams()
SAMPLING = dict(alpha=DEFAULT.alpha, cutoff=DEFAULT.cutoff)  # np_margin's settings at the defaults


def margin_layer(dim, num_classes, **settings):
    """The loss built by the registry, with float64 parameters (for finite differences)."""
    with default_dtype("float64"):
        return losses.get("marginloss").build_loss(dim, num_classes, **settings)


# ---------------------------------------------------------------- forward values

@pytest.mark.parametrize("classes,per_class,dim", SHAPES)
def test_matches_reference_with_given_noise(classes, per_class, dim):
    rng = np.random.default_rng(classes * 100 + per_class * 10 + dim)
    labels = pk_labels(classes, per_class, spread=False)
    features, noise = rng.normal(size=(len(labels), dim)), uniform_noise(rng, len(labels))
    paddle.seed(0)
    layer = losses.get("marginloss").build_loss(dim, classes)
    loss = layer(paddle.to_tensor(features.astype("float32")), paddle.to_tensor(labels),
                 paddle.to_tensor(noise.astype("float32")))
    assert value(loss) == pytest.approx(np_margin(features, labels, noise, np.full(classes, DEFAULT.beta), **SAMPLING),
                                        rel=1e-4)


@pytest.mark.parametrize("per_class", [True, False])
def test_other_settings(per_class):
    rng = np.random.default_rng(4)
    labels = np.array([0, 2, 1, 0, 2, 1, 0, 2, 1, 3, 3, 3])
    features, noise = rng.normal(size=(12, 6)), uniform_noise(rng, 12)
    beta = np.array([0.9, 1.3, 1.1, 1.0]) if per_class else np.array([0.8])
    layer = margin_layer(6, 4, per_class=per_class, alpha=0.35, cutoff=0.9, beta=0.8)
    layer.beta.set_value(beta)
    loss = layer(tensor(features), paddle.to_tensor(labels), paddle.to_tensor(noise))
    reference = np_margin(features, labels, noise, beta, alpha=0.35, cutoff=0.9, per_class=per_class)
    assert reference > 0.1
    assert value(loss) == pytest.approx(reference, rel=1e-9)
    if not per_class:  # the shared beta as built, never changed: the initial value is the setting
        built = margin_layer(6, 4, per_class=False, alpha=0.35, cutoff=0.9, beta=0.8)
        assert value(built(tensor(features), paddle.to_tensor(labels), paddle.to_tensor(noise))) == pytest.approx(
            reference)


def test_reference_is_not_trivially_zero():
    # Guard for the tests above: at the defaults pairs of both kinds cost something.
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(12, 4)), pk_labels(3, 4, spread=False)
    assert np_margin(features, labels, uniform_noise(rng, 12), np.full(3, DEFAULT.beta), **SAMPLING) > 0.05


def test_is_zero_without_active_pairs():
    rng = np.random.default_rng(5)
    labels = pk_labels(2, 2, spread=False)
    features, noise = rng.normal(size=(4, 4)), uniform_noise(rng, 4)
    y, u = paddle.to_tensor(labels), paddle.to_tensor(noise)
    # beta 3 is beyond every distance (at most 2): positives cost 0, the drawn negatives 3 - d > 0.
    assert value(margin_layer(4, 2, beta=3.0, per_class=False, alpha=0.0)(tensor(features), y, u)) > 0
    # With alpha -3 every pair loss is clipped to 0: the mean over no active pairs is 0, not NaN.
    assert value(margin_layer(4, 2, beta=3.0, per_class=False, alpha=-3.0)(tensor(features), y, u)) == 0.0


def test_draws_without_noise():
    labels = pk_labels(3, 2, spread=False)
    loss = margin_layer(4, 3)(tensor(np.random.default_rng(6).normal(size=(6, 4))), paddle.to_tensor(labels))
    assert np.isfinite(value(loss)) and value(loss) > 0


def test_without_training_classes_uses_the_fixed_beta():
    # eval.py's test_loss builds the metric loss with num_classes 0 (held-out classes), in static mode,
    # and runs it eagerly: no parameter then, the setting's value of beta instead.
    rng = np.random.default_rng(18)
    labels = np.array([101, 104, 101, 104, 102, 102])
    features, noise = rng.normal(size=(6, 4)), uniform_noise(rng, 6)
    with static_mode():
        loss_fn = losses.get("marginloss").build_loss(4, 0, beta=1.0)
    assert not isinstance(loss_fn, paddle.nn.Layer)
    loss = loss_fn(tensor(features), paddle.to_tensor(labels), paddle.to_tensor(noise))
    assert value(loss) == pytest.approx(np_margin(features, labels, noise, [1.0], per_class=False, **SAMPLING),
                                        rel=1e-9)


def test_beta_shapes():
    assert margin_layer(4, 5).beta.shape == [5]
    assert margin_layer(4, 5, per_class=False).beta.shape == [1]
    np.testing.assert_allclose(margin_layer(4, 3, beta=0.9).beta.numpy(), 0.9)


# ---------------------------------------------------------------- distance-weighted sampling

def test_sampling_draws_one_distinct_negative_per_positive():
    rng = np.random.default_rng(7)
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])  # 3, 1 and 2 positives per row; 5, 7 and 6 negatives
    features, noise = rng.normal(size=(9, 4)), uniform_noise(rng, 9)
    unit = np_normalize(features)
    distances = paddle.to_tensor(np.array([[np_distance(a, b) for b in unit] for a in unit]))
    chosen = sample_negatives(distances, paddle.to_tensor(labels), paddle.to_tensor(noise), 4, 0.5).numpy()
    expected = np_sampled_negatives(features, labels, noise, cutoff=0.5)
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


# ---------------------------------------------------------------- gradients, label-based selection, bad batches

def test_gradient_matches_finite_differences():
    labels = pk_labels(3, 3, spread=False)
    rng = np.random.default_rng(12)
    features, noise = rng.normal(size=(9, 4)), uniform_noise(rng, 9)
    beta = np.array([1.1, 1.2, 1.3])
    layer = margin_layer(4, 3)
    layer.beta.set_value(beta)
    y, u = paddle.to_tensor(labels), paddle.to_tensor(noise)
    assert_gradient(lambda f: layer(f, y, u),
                    lambda f: np_margin(f, labels, noise, beta, weights_at=features, **SAMPLING), features)
    # beta is learned: its gradient is the derivative of the loss in beta.
    layer.clear_gradients()
    layer(paddle.to_tensor(features), y, u).backward()
    numeric = numeric_gradient(lambda b: np_margin(features, labels, noise, b, **SAMPLING), beta)
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(layer.beta.grad.numpy(), numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("per_class", [2, 4])
def test_shuffled_batch_gives_the_pk_loss(per_class):
    rng = np.random.default_rng(per_class)
    labels = pk_labels(4, per_class, spread=False)
    features, noise = rng.normal(size=(len(labels), 16)), uniform_noise(rng, len(labels))
    layer = margin_layer(16, 4)
    assert_shuffle_invariant(  # each pair keeps its noise
        lambda f, y, order: value(layer(tensor(f), paddle.to_tensor(y), paddle.to_tensor(noise[order][:, order]))),
        features, labels, rng)


def test_uneven_classes_follow_the_labels():
    # Not a P x K batch: classes of 3, 2 and 4 images, interleaved.
    rng = np.random.default_rng(14)
    labels = np.array([2, 1, 2, 0, 1, 0, 2, 0, 0])
    features, noise = rng.normal(size=(9, 4)), uniform_noise(rng, 9)
    loss = margin_layer(4, 3)(tensor(features), paddle.to_tensor(labels), paddle.to_tensor(noise))
    assert value(loss) == pytest.approx(np_margin(features, labels, noise, np.full(3, DEFAULT.beta), **SAMPLING),
                                        rel=1e-9)


@pytest.mark.parametrize("labels,message", [
    ([0, 0, 1], "marginloss: class 1 has a single image"),
    ([0, 0, 0, 0], "no anchor has a negative"),
    ([0, 0, 5, 5], "class id 5 has no beta"),
])
def test_bad_batch_raises_eagerly(labels, message):
    with pytest.raises(UserError, match=message):
        margin_layer(4, 3)(paddle.randn([len(labels), 4], "float64"), paddle.to_tensor(np.array(labels)))


def test_a_shared_beta_takes_any_class_ids():
    margin_layer(4, 3, per_class=False)(paddle.randn([4, 4], "float64"), paddle.to_tensor(np.array([0, 0, 5, 5])))
    margin_loss(paddle.randn([4, 4]), paddle.to_tensor(np.array([0, 0, 5, 5])), beta=1.0, alpha=0.2, cutoff=0.5)


# ---------------------------------------------------------------- static Programs

def test_static_program_trains_one_step():
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 1])
    rng = np.random.default_rng(15)
    inputs = rng.normal(size=(len(labels), 5)).astype("float32")
    noise = uniform_noise(rng, len(labels)).astype("float32")  # fed, as the engine does
    first, embedding, _, parameters = static_loss_step("marginloss", labels, inputs, noise)
    assert first > 0
    reference = np_margin(embedding, labels, noise.astype(float), np.full(3, DEFAULT.beta), **SAMPLING)
    assert first == pytest.approx(reference, rel=1e-4, abs=1e-6)
    assert "marginloss_beta" in parameters
    assert paddle.in_dynamic_mode()


def test_static_loss_draws_its_own_noise_and_learns_beta():
    labels = np.array([0, 1, 2, 0, 1, 2])
    inputs = np.random.default_rng(16).normal(size=(6, 5)).astype("float32")
    with static_mode():
        paddle.seed(3)
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 5], "float32")
            y = paddle.static.data("y", [None], "int64")
            loss = losses.get("marginloss").build_loss(4, 3)(paddle.nn.Linear(5, 4)(x), y)
            paddle.optimizer.Momentum(learning_rate=0.5, momentum=0.9,
                                      weight_decay=paddle.regularizer.L2Decay(1.0)).minimize(loss)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        scope = paddle.static.global_scope()
        values = [exe.run(main, feed={"x": inputs, "y": labels}, fetch_list=[loss])[0].item() for _ in range(3)]
        beta = np.array(scope.find_var("marginloss_beta").get_tensor())
    assert all(np.isfinite(values)) and len(set(values)) > 1
    assert beta.shape == (3,) and np.any(np.abs(beta - DEFAULT.beta) > 1e-4), "beta must be learned"


def test_beta_is_not_weight_decayed():
    # Every pair loss is 0 (alpha -5), so beta's gradient is 0: only weight decay could move it.
    labels = np.array([0, 1, 2, 0, 1, 2])
    inputs = np.random.default_rng(17).normal(size=(6, 5)).astype("float32")
    with static_mode():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 5], "float32")
            y = paddle.static.data("y", [None], "int64")
            linear = paddle.nn.Linear(5, 4)
            loss_fn = losses.get("marginloss").build_loss(4, 3, alpha=-5.0)
            loss = loss_fn(linear(x), y) + 0.0 * paddle.sum(linear.weight)
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
    np.testing.assert_array_equal(beta, np.full(3, DEFAULT.beta, dtype=np.float32))


# ---------------------------------------------------------------- the scripts: test_loss
# (A resumed run feeds the same noise as the uninterrupted one: tests/engine/test_xbm.py resumes a margin-loss run.)

def test_test_loss_is_the_same_every_run():
    from engine.evaluate import test_loss  # imported here: pytest would collect a module-level test_loss

    labels = np.repeat(np.arange(4), 4)
    features = np.random.default_rng(1).normal(size=(16, 8)).astype("float32")
    config = defaults("eval", loss_name="marginloss", samples_each_class=4, test_batch_size=16)
    assert test_loss(config, features, labels) == test_loss(config, features, labels)
