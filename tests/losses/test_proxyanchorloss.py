"""proxyanchorloss against a numpy loop of the paper's formula: values, gradients (features and proxies), the
proxies' learning-rate multiplier in a static Program, and the proxies in checkpoints."""
from dataclasses import asdict

import numpy as np
import paddle
import pytest
from loss_checks import assert_checkpoint_keeps, assert_gradient, default_dtype, np_proxy_anchor, tensor, value
from numeric import numeric_gradient
from paddle_modes import static_loss_step, static_mode

import losses
from losses.proxyanchorloss import ProxyAnchorParams, proxy_anchor_loss
from utility.errors import UserError

DEFAULT = ProxyAnchorParams()
SHAPE = dict(alpha=DEFAULT.alpha, margin=DEFAULT.margin)


def proxy_layer(dim, num_classes, proxies=None, **settings):
    """The loss built by the registry with float64 proxies, set to `proxies` when given."""
    with default_dtype("float64"):
        layer = losses.get("proxyanchorloss").build_loss(dim, num_classes, **settings)
    if proxies is not None:
        layer.proxies.set_value(proxies)
    return layer


def test_defaults_are_the_papers():
    assert asdict(DEFAULT) == dict(alpha=32.0, margin=0.1, lr_multiplier=100.0)


@pytest.mark.parametrize("classes,rows,dim", [(3, 8, 4), (5, 12, 16), (10, 6, 8)])
def test_matches_reference(classes, rows, dim):
    rng = np.random.default_rng(classes * 10 + rows)
    features, proxies = rng.normal(size=(rows, dim)), rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, size=rows)  # any batch; with 10 classes and 6 rows some proxies are absent
    loss = proxy_layer(dim, classes, proxies)(tensor(features), paddle.to_tensor(labels))
    reference = np_proxy_anchor(features, labels, proxies, **SHAPE)
    assert reference > 0.5
    assert value(loss) == pytest.approx(reference, rel=1e-9)


def test_absent_classes_count_in_the_negative_term_only():
    # Two rows of class 0 and one of class 1, proxies of classes 0, 1, 2 at known cosines (alpha 2, delta 0.1):
    # positive term: mean over proxies 0 and 1; negative term: mean over all three proxies.
    features = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    proxies = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = np.array([0, 0, 1])
    s = np.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.6, 0.8, -0.6]])  # s[c, i] = cos(proxy c, row i)
    positive = (np.log1p(np.exp(-2 * (s[0, 0] - 0.1)) + np.exp(-2 * (s[0, 1] - 0.1)))
                + np.log1p(np.exp(-2 * (s[1, 2] - 0.1)))) / 2
    negative = (np.log1p(np.exp(2 * (s[0, 2] + 0.1)))
                + np.log1p(np.exp(2 * (s[1, 0] + 0.1)) + np.exp(2 * (s[1, 1] + 0.1)))
                + np.log1p(np.exp(2 * (s[2] + 0.1)).sum())) / 3
    loss = proxy_anchor_loss(tensor(features), paddle.to_tensor(labels), tensor(proxies), alpha=2.0, margin=0.1)
    assert value(loss) == pytest.approx(positive + negative, rel=1e-12)
    assert np_proxy_anchor(features, labels, proxies, alpha=2.0, margin=0.1) == pytest.approx(positive + negative)


def test_is_finite_at_large_scales():
    rng = np.random.default_rng(3)
    features, proxies, labels = rng.normal(size=(8, 3)), rng.normal(size=(4, 3)), rng.integers(0, 4, size=8)
    f = paddle.to_tensor(features.astype("float32"), stop_gradient=False)
    loss = proxy_anchor_loss(f, paddle.to_tensor(labels), paddle.to_tensor(proxies.astype("float32")),
                             alpha=3000.0, margin=0.1)
    loss.backward()
    assert np.isfinite(value(loss)) and np.all(np.isfinite(f.grad.numpy()))
    assert value(loss) == pytest.approx(np_proxy_anchor(features, labels, proxies, alpha=3000.0, margin=0.1),
                                        rel=1e-4)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(12)
    features, proxies, labels = rng.normal(size=(7, 4)), rng.normal(size=(4, 4)), np.array([0, 2, 1, 0, 2, 2, 1])
    settings = dict(alpha=4.0, margin=0.1)
    y = paddle.to_tensor(labels)
    layer = proxy_layer(4, 4, proxies, **settings)
    assert_gradient(lambda f: layer(f, y), lambda f: np_proxy_anchor(f, labels, proxies, **settings), features)
    layer.clear_gradients()
    layer(paddle.to_tensor(features), y).backward()
    numeric = numeric_gradient(lambda p: np_proxy_anchor(features, labels, p, **settings), proxies)
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(layer.proxies.grad.numpy(), numeric, rtol=1e-5, atol=1e-7)


def test_shuffled_batch_gives_the_same_loss():
    rng = np.random.default_rng(2)
    features, proxies, labels = rng.normal(size=(9, 6)), rng.normal(size=(3, 6)), rng.integers(0, 3, size=9)
    layer = proxy_layer(6, 3, proxies)
    order = rng.permutation(9)
    in_order = value(layer(tensor(features), paddle.to_tensor(labels)))
    assert in_order > 0
    assert value(layer(tensor(features[order]), paddle.to_tensor(labels[order]))) == pytest.approx(in_order, rel=1e-12)


def test_class_ids_without_a_proxy_are_refused():
    with pytest.raises(UserError, match="proxyanchorloss: class id 3 has no proxy"):
        proxy_layer(4, 3)(paddle.randn([4, 4], "float64"), paddle.to_tensor(np.array([0, 1, 3, 2])))


def test_static_program_trains_one_step():
    labels = np.array([0, 2, 1, 1, 0, 2])
    inputs = np.random.default_rng(11).normal(size=(len(labels), 5)).astype("float32")
    first, _, _, parameters = static_loss_step("proxyanchorloss", labels, inputs)
    assert first > 0 and "proxyanchorloss_proxies" in parameters
    assert paddle.in_dynamic_mode()


def proxies_after_one_sgd_step(lr_multiplier):
    """(proxies before, proxies after) one SGD step (lr 0.01, weight decay 0.1) of a static Program."""
    labels = np.array([0, 2, 1, 1, 0, 2])
    inputs = np.random.default_rng(13).normal(size=(6, 5)).astype("float32")
    with static_mode():
        paddle.seed(4)
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 5], "float32")
            y = paddle.static.data("y", [None], "int64")
            loss = losses.get("proxyanchorloss").build_loss(4, 3, lr_multiplier=lr_multiplier)(
                paddle.nn.Linear(5, 4)(x), y)
            paddle.optimizer.SGD(0.01, weight_decay=paddle.regularizer.L2Decay(0.1)).minimize(loss)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        scope = paddle.static.global_scope()
        before = np.array(scope.find_var("proxyanchorloss_proxies").get_tensor())
        exe.run(main, feed={"x": inputs, "y": labels})
        return before, np.array(scope.find_var("proxyanchorloss_proxies").get_tensor())


def test_proxies_learn_at_the_multiplied_rate_without_weight_decay():
    before, after_fast = proxies_after_one_sgd_step(100.0)
    same_start, after_plain = proxies_after_one_sgd_step(1.0)
    np.testing.assert_array_equal(before, same_start)
    plain_step = after_plain - before
    assert np.abs(plain_step).max() > 1e-6
    # SGD: step = lr * multiplier * gradient; with weight decay on the proxies it would not be proportional.
    np.testing.assert_allclose(after_fast - before, 100.0 * plain_step, rtol=1e-3, atol=1e-7)


def test_proxies_are_saved_and_restored_by_checkpoints(tmp_path):
    assert_checkpoint_keeps("proxyanchorloss", "proxyanchorloss_proxies", tmp_path)
