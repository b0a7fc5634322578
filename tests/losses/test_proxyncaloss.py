"""proxyncaloss against a numpy loop of PML's ProxyNCALoss: values, gradients (features and proxies), a static step."""
import math

import numpy as np
import paddle
import pytest
from loss_checks import assert_checkpoint_keeps, assert_gradient, default_dtype, np_proxy_nca, tensor, value
from numeric import numeric_gradient
from paddle_modes import static_loss_step

import losses
from losses.proxyncaloss import ProxyNCAParams, proxy_nca_loss
from utility.errors import UserError


def proxy_layer(dim, num_classes, proxies=None, **settings):
    """The loss built by the registry with float64 proxies, set to `proxies` when given."""
    with default_dtype("float64"):
        layer = losses.get("proxyncaloss").build_loss(dim, num_classes, **settings)
    if proxies is not None:
        layer.proxies.set_value(proxies)
    return layer


def test_default_is_pmls():
    assert ProxyNCAParams().scale == 1.0


@pytest.mark.parametrize("scale", [1.0, 9.0])
@pytest.mark.parametrize("classes,rows,dim", [(3, 8, 4), (10, 6, 8)])
def test_matches_reference(classes, rows, dim, scale):
    rng = np.random.default_rng(classes * 10 + rows)
    features, proxies = rng.normal(size=(rows, dim)), rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, size=rows)
    loss = proxy_layer(dim, classes, proxies, scale=scale)(tensor(features), paddle.to_tensor(labels))
    reference = np_proxy_nca(features, labels, proxies, scale=scale)
    assert reference > 0.1
    assert value(loss) == pytest.approx(reference, rel=1e-9)


def test_one_row_by_hand():
    # The row sits on proxy 0 (squared distance 0) and is orthogonal to proxy 1 (squared distance 2):
    # -log(e^0 / (e^0 + e^(-2 s))) = log(1 + e^(-2 s)).
    loss = proxy_nca_loss(tensor(np.array([[3.0, 0.0]])), paddle.to_tensor(np.array([0])),
                          tensor(np.array([[1.0, 0.0], [0.0, 2.0]])), scale=1.5)
    assert value(loss) == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-12)


def test_is_finite_at_large_scales():
    rng = np.random.default_rng(3)
    features, proxies, labels = rng.normal(size=(8, 3)), rng.normal(size=(4, 3)), rng.integers(0, 4, size=8)
    loss = proxy_nca_loss(paddle.to_tensor(features.astype("float32")), paddle.to_tensor(labels),
                          paddle.to_tensor(proxies.astype("float32")), scale=500.0)
    assert value(loss) == pytest.approx(np_proxy_nca(features, labels, proxies, scale=500.0), rel=1e-4)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(12)
    features, proxies, labels = rng.normal(size=(7, 4)), rng.normal(size=(4, 4)), np.array([0, 2, 1, 0, 2, 3, 1])
    y = paddle.to_tensor(labels)
    layer = proxy_layer(4, 4, proxies, scale=3.0)
    assert_gradient(lambda f: layer(f, y), lambda f: np_proxy_nca(f, labels, proxies, scale=3.0), features)
    layer.clear_gradients()
    layer(paddle.to_tensor(features), y).backward()
    numeric = numeric_gradient(lambda p: np_proxy_nca(features, labels, p, scale=3.0), proxies)
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(layer.proxies.grad.numpy(), numeric, rtol=1e-5, atol=1e-7)


def test_shuffled_batch_gives_the_same_loss():
    rng = np.random.default_rng(2)
    features, labels = rng.normal(size=(9, 6)), rng.integers(0, 3, size=9)
    layer = proxy_layer(6, 3, rng.normal(size=(3, 6)))
    order = rng.permutation(9)
    in_order = value(layer(tensor(features), paddle.to_tensor(labels)))
    assert in_order > 0
    assert value(layer(tensor(features[order]), paddle.to_tensor(labels[order]))) == pytest.approx(in_order, rel=1e-12)


def test_class_ids_without_a_proxy_are_refused():
    with pytest.raises(UserError, match="proxyncaloss: class id -1 has no proxy"):
        proxy_layer(4, 3)(paddle.randn([2, 4], "float64"), paddle.to_tensor(np.array([0, -1])))


def test_static_program_trains_one_step():
    labels = np.array([0, 2, 1, 1, 0, 2])
    inputs = np.random.default_rng(11).normal(size=(len(labels), 5)).astype("float32")
    first, _, _, parameters = static_loss_step("proxyncaloss", labels, inputs)
    assert first > 0 and "proxyncaloss_proxies" in parameters
    assert paddle.in_dynamic_mode()


def test_proxies_are_saved_and_restored_by_checkpoints(tmp_path):
    assert_checkpoint_keeps("proxyncaloss", "proxyncaloss_proxies", tmp_path)
