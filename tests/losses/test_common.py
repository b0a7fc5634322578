"""The reference sets of losses/common.py (cross-batch memory, other devices' rows), through every pair loss
that takes them, against numpy loops.

Anchors are the batch rows only; candidates are the batch followed by the references; a reference
labelled -1 takes part in no pair; no gradient reaches the references.
"""
from dataclasses import asdict

import numpy as np
import paddle
import pytest
from loss_checks import (default_dtype, np_batch_hard, np_circle, np_contrastive, np_eml, np_margin, np_ms,
                         np_quadruplet, np_rll, np_supcon)
from numeric import numeric_gradient
from paddle_modes import static_mode

import losses
from losses.circleloss import circleloss
from losses.contrastiveloss import contrastiveloss
from losses.emlloss import emlloss
from losses.marginloss import MarginParams
from losses.multisimilarityloss import MultiSimilarityParams, multisimilarityloss
from losses.quadrupletloss import quadrupletloss
from losses.rankedlistloss import RankedListParams, rankedlistloss
from losses.supconloss import supconloss
from losses.tripletloss import batch_hard_tripletloss

REFERENCE_LOSSES = ["batchhardtripletloss", "circleloss", "contrastiveloss", "emlloss", "marginloss",
                    "multisimilarityloss", "quadrupletloss", "rankedlistloss", "supconloss"]
BETA = np.array([1.0, 1.1, 1.2, 1.3, 1.15])  # marginloss: one learned beta per class 0..4
RLL = asdict(RankedListParams(temperature=3.0))
MS = asdict(MultiSimilarityParams(beta=10.0))
CIRCLE = dict(margin=0.3, gamma=8.0)
CONTRASTIVE = dict(positive_margin=0.3, negative_margin=1.2)
MARGIN = dict(alpha=MarginParams().alpha, cutoff=MarginParams().cutoff)


def margin_layer(dim):
    with default_dtype("float64"):
        layer = losses.get("marginloss").build_loss(dim, len(BETA))
    layer.beta.set_value(BETA)
    return layer


def case(name, dim, noise=None):
    """(paddle loss(f, y, refs, ref_labels), numpy loss(f, y, refs, ref_labels)) of the loss `name`."""
    if name == "batchhardtripletloss":
        return (lambda f, y, r, rl: batch_hard_tripletloss(f, y, r, rl, margin=0.3),
                lambda f, y, r, rl: np_batch_hard(f, y, r, rl, margin=0.3))
    if name == "quadrupletloss":
        return (lambda f, y, r, rl: quadrupletloss(f, y, r, rl, margin=0.3),
                lambda f, y, r, rl: np_quadruplet(f, y, r, rl, margin=0.3))
    if name == "emlloss":
        return emlloss, np_eml
    if name == "supconloss":
        return (lambda f, y, r, rl: supconloss(f, y, r, rl, temperature=0.5),
                lambda f, y, r, rl: np_supcon(f, y, r, rl, temperature=0.5))
    if name == "circleloss":
        return (lambda f, y, r, rl: circleloss(f, y, r, rl, **CIRCLE),
                lambda f, y, r, rl: np_circle(f, y, r, rl, **CIRCLE))
    if name == "contrastiveloss":
        return (lambda f, y, r, rl: contrastiveloss(f, y, r, rl, **CONTRASTIVE),
                lambda f, y, r, rl: np_contrastive(f, y, r, rl, **CONTRASTIVE))
    if name == "rankedlistloss":
        return (lambda f, y, r, rl: rankedlistloss(f, y, r, rl, **RLL), lambda f, y, r, rl: np_rll(f, y, r, rl, **RLL))
    if name == "multisimilarityloss":
        return (lambda f, y, r, rl: multisimilarityloss(f, y, r, rl, **MS), lambda f, y, r, rl: np_ms(f, y, r, rl, **MS))
    layer = margin_layer(dim)
    return (lambda f, y, r, rl: layer(f, y, paddle.to_tensor(noise), r, rl),
            lambda f, y, r, rl: np_margin(f, y, noise, BETA, r, rl, **MARGIN))


def batch_and_memory(seed, dim=6, memory=10, ignored=3):
    """A P x K batch of classes 0..3 and a memory of classes 0..4, `ignored` of its rows labelled -1."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 2)
    features = rng.normal(size=(len(labels), dim))
    references = rng.normal(size=(memory, dim))
    reference_labels = rng.integers(0, 5, size=memory)
    reference_labels[rng.choice(memory, size=ignored, replace=False)] = -1
    noise = rng.uniform(1e-6, 1 - 1e-6, size=(len(labels), len(labels) + memory))
    return features, labels, references, reference_labels, noise


def tensors(*arrays):
    return [paddle.to_tensor(a) for a in arrays]


def test_the_registry_says_which_losses_take_references():
    assert sorted(name for name, spec in losses.LOSSES.items() if spec.takes_references) == REFERENCE_LOSSES


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", REFERENCE_LOSSES)
def test_loss_with_references_matches_numpy(name, seed):
    features, labels, references, reference_labels, noise = batch_and_memory(seed)
    paddle_loss, numpy_loss = case(name, features.shape[1], noise)
    got = paddle_loss(*tensors(features, labels, references, reference_labels)).item()
    want = numpy_loss(features, labels, references, reference_labels)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", REFERENCE_LOSSES)
def test_references_are_not_trivially_ignored(name):
    # Guard for the test above: on these cases the memory changes the loss.
    changes = []
    for seed in range(3):
        features, labels, references, reference_labels, noise = batch_and_memory(seed)
        numpy_loss = case(name, features.shape[1], noise)[1]
        changes.append(abs(numpy_loss(features, labels, references, reference_labels)
                           - numpy_loss(features, labels, references[:0], reference_labels[:0])))
    assert max(changes) > 1e-3


@pytest.mark.parametrize("name", REFERENCE_LOSSES)
def test_ignored_references_are_the_same_as_left_out(name):
    features, labels, references, reference_labels, noise = batch_and_memory(3, ignored=4)
    kept = reference_labels != -1
    columns = np.concatenate([np.ones(len(labels), bool), kept])
    with_ignored = case(name, features.shape[1], noise)[0](*tensors(features, labels, references, reference_labels))
    left_out = case(name, features.shape[1], noise[:, columns])[0](
        *tensors(features, labels, references[kept], reference_labels[kept]))
    assert with_ignored.item() == pytest.approx(left_out.item(), rel=1e-12)


@pytest.mark.parametrize("name", REFERENCE_LOSSES)
def test_all_ignored_references_give_the_plain_loss(name):
    # XBM before --xbm_start_iter: every slot is fed as -1.
    features, labels, references, _, noise = batch_and_memory(4)
    paddle_loss, _ = case(name, features.shape[1], noise)
    memory_off = paddle_loss(*tensors(features, labels, references, np.full(len(references), -1)))
    plain = case(name, features.shape[1], noise[:, :len(labels)])[0](*tensors(features, labels), None, None)
    assert memory_off.item() == pytest.approx(plain.item(), rel=1e-12)


@pytest.mark.parametrize("name", REFERENCE_LOSSES)
def test_no_gradient_reaches_the_references(name):
    features, labels, references, reference_labels, noise = batch_and_memory(5)
    f = paddle.to_tensor(features, stop_gradient=False)
    r = paddle.to_tensor(references, stop_gradient=False)
    case(name, features.shape[1], noise)[0](f, paddle.to_tensor(labels), r, paddle.to_tensor(reference_labels)).backward()
    assert np.abs(f.grad.numpy()).max() > 0
    assert r.grad is None or not np.any(r.grad.numpy())


@pytest.mark.parametrize("name", REFERENCE_LOSSES)
def test_gradient_with_references_matches_finite_differences(name):
    features, labels, references, reference_labels, noise = batch_and_memory(6, dim=4)
    paddle_loss, numpy_loss = case(name, features.shape[1], noise)
    fixed = {"rankedlistloss": lambda f: np_rll(f, labels, references, reference_labels, **RLL,
                                                weights_at=features),  # the weights are constants
             "circleloss": lambda f: np_circle(f, labels, references, reference_labels, **CIRCLE,
                                               weights_at=features),  # a_p, a_n are constants
             "marginloss": lambda f: np_margin(f, labels, noise, BETA, references, reference_labels, **MARGIN,
                                               weights_at=features)}  # the draw is a selection
    numpy_of_f = fixed.get(name, lambda f: numpy_loss(f, labels, references, reference_labels))
    f = paddle.to_tensor(features, stop_gradient=False)
    paddle_loss(f, *tensors(labels, references, reference_labels)).backward()
    numeric = numeric_gradient(numpy_of_f, features)
    assert np.abs(numeric).max() > 1e-3, "the case must have a non-zero gradient"
    np.testing.assert_allclose(f.grad.numpy(), numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", REFERENCE_LOSSES)
def test_references_as_static_inputs(name):
    # The way the trainer feeds the memory: float32 [N, D] and int64 [N] data inputs of a PIR Program.
    features, labels, references, reference_labels, noise = batch_and_memory(7)
    spec = losses.get(name)
    settings = {"batchhardtripletloss": dict(margin=0.3), "quadrupletloss": dict(margin=0.3),
                "marginloss": dict(per_class=False)}.get(name, {})
    with static_mode():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 6], "float32")
            y = paddle.static.data("y", [None], "int64")
            r = paddle.static.data("r", [len(references), 6], "float32")
            rl = paddle.static.data("rl", [len(references)], "int64")
            loss_fn = spec.build_loss(6, 5, **settings)
            extra = (paddle.static.data("u", [None, None], "float32"),) if spec.takes_noise else ()
            loss = loss_fn(x, y, *extra, references=r, reference_labels=rl)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        feed = {"x": features.astype("float32"), "y": labels, "r": references.astype("float32"), "rl": reference_labels}
        if spec.takes_noise:
            feed["u"] = noise.astype("float32")
        got, = exe.run(main, feed=feed, fetch_list=[loss])
    f32, r32 = features.astype("float32").astype(float), references.astype("float32").astype(float)
    defaults = {} if spec.params is None else asdict(spec.params(**settings))
    numpy_loss = {"batchhardtripletloss": lambda *a: np_batch_hard(*a, **defaults),
                  "quadrupletloss": lambda *a: np_quadruplet(*a, **defaults), "emlloss": np_eml,
                  "rankedlistloss": lambda *a: np_rll(*a, **defaults),
                  "multisimilarityloss": lambda *a: np_ms(*a, **defaults),
                  "contrastiveloss": lambda *a: np_contrastive(*a, **defaults),
                  "circleloss": lambda *a: np_circle(*a, **defaults),
                  "supconloss": lambda *a: np_supcon(*a, **defaults),
                  "marginloss": lambda f, y, r, rl: np_margin(f, y, noise.astype("float32").astype(float),
                                                              np.full(5, MarginParams().beta), r, rl, **MARGIN)}[name]
    assert got.item() == pytest.approx(numpy_loss(f32, labels, r32, reference_labels), rel=1e-4, abs=1e-6)
