"""Pair losses with a reference set (cross-batch memory, other devices' rows) against numpy loops.

Anchors are the batch rows only; candidates are the batch followed by the references; a reference
labelled -1 takes part in no pair; no gradient reaches the references.
"""
import math

import numpy as np
import paddle
import pytest
from paddle_modes import static_mode

import losses
from cli.args import defaults
from losses.emlloss import emlloss
from losses.marginloss import MarginLoss
from losses.multisimilarityloss import multisimilarityloss
from losses.quadrupletloss import quadrupletloss
from losses.rankedlistloss import rankedlistloss
from losses.tripletloss import batch_hard_tripletloss

REFERENCE_LOSSES = {"batchhardtripletloss", "quadrupletloss", "emlloss", "rankedlistloss",
                    "multisimilarityloss", "marginloss"}


# ---------------------------------------------------------------- numpy references (loops over anchors x candidates)

def np_normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def np_sq(a, b):
    return float(np.sum((a - b) ** 2))


def pairs_of(labels, candidate_labels, i):
    """(positive candidates, negative candidates) of anchor i: j != i, same / other class, label -1 left out."""
    positives = [j for j, c in enumerate(candidate_labels) if c != -1 and j != i and c == labels[i]]
    negatives = [j for j, c in enumerate(candidate_labels) if c != -1 and c != labels[i]]
    return positives, negatives


def concat(features, labels, references, reference_labels):
    return np.concatenate([features, references]), np.concatenate([labels, reference_labels])


def np_batch_hard(features, labels, references, reference_labels, margin=0.1):
    cand, cand_labels = concat(np_normalize(features), labels, np_normalize(references), reference_labels)
    terms = []
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, cand_labels, i)
        terms.append(max(max(np_sq(cand[i], cand[j]) for j in positives)
                         - min(np_sq(cand[i], cand[k]) for k in negatives) + margin, 0.0))
    return np.mean(terms)


def np_quadruplet(features, labels, references, reference_labels, margin=0.1):
    cand, cand_labels = concat(np_normalize(features), labels, np_normalize(references), reference_labels)
    hardest_positive, hardest_negative = -math.inf, math.inf
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, cand_labels, i)
        hardest_positive = max([hardest_positive] + [np_sq(cand[i], cand[j]) for j in positives])
        hardest_negative = min([hardest_negative] + [np_sq(cand[i], cand[k]) for k in negatives])
    return max(hardest_positive - hardest_negative + margin, 0.0)


def np_eml(features, labels, references, reference_labels, beta=100000.0, threshold=20.0):
    def surrogate(theta, bias):
        return math.log(1 + beta * theta * math.exp(bias)) / math.log(1 + beta)

    cand, cand_labels = concat(features, labels, references, reference_labels)
    terms = []
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, cand_labels, i)
        p = np.array([np_sq(cand[i], cand[j]) for j in positives])
        n = np.array([np_sq(cand[i], cand[k]) for k in negatives])
        theta = np.mean(np.exp(p - p.max())) * np.mean(np.exp(n.min() - n))
        bias = p.max() - n.min()
        terms.append(surrogate(theta, min(bias, threshold))
                     + (math.log(theta) + max(bias, threshold) + math.log(beta)) / math.log(1 + beta)
                     - surrogate(theta, threshold))
    return np.mean(terms)


def np_rll(features, labels, references, reference_labels, alpha=1.2, margin=0.4, temperature=10.0, balance=1.0,
           weights_at=None):
    cand, cand_labels = concat(np_normalize(features), labels, np_normalize(references), reference_labels)
    weight_cand = cand if weights_at is None else concat(np_normalize(weights_at), labels,
                                                         np_normalize(references), reference_labels)[0]
    terms = []
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, cand_labels, i)
        distance = {j: math.sqrt(np_sq(cand[i], cand[j])) for j in positives + negatives}
        positive_costs = [distance[j] - (alpha - margin) for j in positives if distance[j] > alpha - margin]
        hard = [k for k in negatives if distance[k] < alpha]
        weights = [math.exp(temperature * (alpha - math.sqrt(np_sq(weight_cand[i], weight_cand[k])))) for k in hard]
        positive_loss = np.mean(positive_costs) if positive_costs else 0.0
        negative_loss = (np.dot(weights, [alpha - distance[k] for k in hard]) / np.sum(weights)) if hard else 0.0
        terms.append(positive_loss + balance * negative_loss)
    return np.mean(terms)


def np_ms(features, labels, references, reference_labels, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1):
    cand, cand_labels = concat(np_normalize(features), labels, np_normalize(references), reference_labels)
    total = 0.0
    for i in range(len(labels)):
        positive_rows, negative_rows = pairs_of(labels, cand_labels, i)
        positives = [float(cand[i] @ cand[j]) for j in positive_rows]
        negatives = [float(cand[i] @ cand[k]) for k in negative_rows]
        mined_negatives = [s for s in negatives if s + epsilon > min(positives)]
        mined_positives = [s for s in positives if s - epsilon < max(negatives)]
        if not mined_negatives or not mined_positives:
            continue
        total += math.log(1 + sum(math.exp(-alpha * (s - base)) for s in mined_positives)) / alpha
        total += math.log(1 + sum(math.exp(beta * (s - base)) for s in mined_negatives)) / beta
    return total / len(labels)


def np_log_weight(d, dim, cutoff=0.5):
    d = max(d, cutoff)
    return (2 - dim) * math.log(d) - 0.5 * (dim - 3) * math.log(max(1 - d * d / 4, 1e-8))


def np_margin(features, labels, references, reference_labels, noise, beta, alpha=0.2, weights_at=None):
    """Margin loss, one learned beta per class; negatives drawn at `weights_at` (default the features)."""
    cand, cand_labels = concat(np_normalize(features), labels, np_normalize(references), reference_labels)
    draw_at = cand if weights_at is None else concat(np_normalize(weights_at), labels,
                                                     np_normalize(references), reference_labels)[0]
    pair_losses = []
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, cand_labels, i)
        score = {k: np_log_weight(math.sqrt(np_sq(draw_at[i], draw_at[k])), cand.shape[1])
                 - math.log(-math.log(noise[i, k])) for k in negatives}
        drawn = sorted(negatives, key=lambda k: -score[k])[:len(positives)]
        b = beta[labels[i]]
        pair_losses += [max(alpha + math.sqrt(np_sq(cand[i], cand[j])) - b, 0.0) for j in positives]
        pair_losses += [max(alpha + b - math.sqrt(np_sq(cand[i], cand[k])), 0.0) for k in drawn]
    active = [x for x in pair_losses if x > 0]
    return sum(active) / len(active) if active else 0.0


# ---------------------------------------------------------------- cases

BETA = np.array([1.0, 1.1, 1.2, 1.3, 1.15])


def margin_layer(dim):
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")
    try:
        layer = MarginLoss(dim, len(BETA), beta=1.2)
    finally:
        paddle.set_default_dtype(previous)
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
    if name == "rankedlistloss":
        return (lambda f, y, r, rl: rankedlistloss(f, y, r, rl, temperature=3.0),
                lambda f, y, r, rl: np_rll(f, y, r, rl, temperature=3.0))
    if name == "multisimilarityloss":
        return (lambda f, y, r, rl: multisimilarityloss(f, y, r, rl, beta=10.0),
                lambda f, y, r, rl: np_ms(f, y, r, rl, beta=10.0))
    layer = margin_layer(dim)
    return (lambda f, y, r, rl: layer(f, y, paddle.to_tensor(noise), r, rl),
            lambda f, y, r, rl: np_margin(f, y, r, rl, noise, BETA))


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
    assert {name for name, spec in losses.LOSSES.items() if spec.takes_references} == REFERENCE_LOSSES


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(REFERENCE_LOSSES))
def test_loss_with_references_matches_numpy(name, seed):
    features, labels, references, reference_labels, noise = batch_and_memory(seed)
    paddle_loss, numpy_loss = case(name, features.shape[1], noise)
    got = paddle_loss(*tensors(features, labels, references, reference_labels)).item()
    want = numpy_loss(features, labels, references, reference_labels)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", sorted(REFERENCE_LOSSES))
def test_references_are_not_trivially_ignored(name):
    # Guard for the test above: on these cases the memory changes the loss.
    changes = []
    for seed in range(3):
        features, labels, references, reference_labels, noise = batch_and_memory(seed)
        numpy_loss = case(name, features.shape[1], noise)[1]
        changes.append(abs(numpy_loss(features, labels, references, reference_labels)
                           - numpy_loss(features, labels, references[:0], reference_labels[:0])))
    assert max(changes) > 1e-3


@pytest.mark.parametrize("name", sorted(REFERENCE_LOSSES))
def test_ignored_references_are_the_same_as_left_out(name):
    features, labels, references, reference_labels, noise = batch_and_memory(3, ignored=4)
    kept = reference_labels != -1
    columns = np.concatenate([np.ones(len(labels), bool), kept])
    with_ignored = case(name, features.shape[1], noise)[0](*tensors(features, labels, references, reference_labels))
    left_out = case(name, features.shape[1], noise[:, columns])[0](
        *tensors(features, labels, references[kept], reference_labels[kept]))
    assert with_ignored.item() == pytest.approx(left_out.item(), rel=1e-12)


@pytest.mark.parametrize("name", sorted(REFERENCE_LOSSES))
def test_all_ignored_references_give_the_plain_loss(name):
    # XBM before --xbm_start_iter: every slot is fed as -1.
    features, labels, references, _, noise = batch_and_memory(4)
    paddle_loss, _ = case(name, features.shape[1], noise)
    memory_off = paddle_loss(*tensors(features, labels, references, np.full(len(references), -1)))
    plain = case(name, features.shape[1], noise[:, :len(labels)])[0](*tensors(features, labels), None, None)
    assert memory_off.item() == pytest.approx(plain.item(), rel=1e-12)


@pytest.mark.parametrize("name", sorted(REFERENCE_LOSSES))
def test_no_gradient_reaches_the_references(name):
    features, labels, references, reference_labels, noise = batch_and_memory(5)
    f = paddle.to_tensor(features, stop_gradient=False)
    r = paddle.to_tensor(references, stop_gradient=False)
    case(name, features.shape[1], noise)[0](f, paddle.to_tensor(labels), r, paddle.to_tensor(reference_labels)).backward()
    assert np.abs(f.grad.numpy()).max() > 0
    assert r.grad is None or not np.any(r.grad.numpy())


@pytest.mark.parametrize("name", sorted(REFERENCE_LOSSES))
def test_gradient_with_references_matches_finite_differences(name):
    features, labels, references, reference_labels, noise = batch_and_memory(6, dim=4)
    paddle_loss, numpy_loss = case(name, features.shape[1], noise)
    fixed = {"rankedlistloss": lambda f: np_rll(f, labels, references, reference_labels, temperature=3.0,
                                                weights_at=features),  # the weights are constants
             "marginloss": lambda f: np_margin(f, labels, references, reference_labels, noise, BETA,
                                               weights_at=features)}  # the draw is a selection
    numpy_of_f = fixed.get(name, lambda f: numpy_loss(f, labels, references, reference_labels))
    f = paddle.to_tensor(features, stop_gradient=False)
    paddle_loss(f, *tensors(labels, references, reference_labels)).backward()
    numeric = np.zeros_like(features)
    step = 1e-6
    for index in np.ndindex(*features.shape):
        up, down = features.copy(), features.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (numpy_of_f(up) - numpy_of_f(down)) / (2 * step)
    assert np.abs(numeric).max() > 1e-3, "the case must have a non-zero gradient"
    np.testing.assert_allclose(f.grad.numpy(), numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(REFERENCE_LOSSES))
def test_references_as_static_inputs(name):
    # The way the trainer feeds the memory: float32 [N, D] and int64 [N] data inputs of a PIR Program.
    features, labels, references, reference_labels, noise = batch_and_memory(7)
    spec = losses.get(name)
    options = defaults("train", margin=0.3, margin_beta_per_class=False)
    with static_mode():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 6], "float32")
            y = paddle.static.data("y", [None], "int64")
            r = paddle.static.data("r", [len(references), 6], "float32")
            rl = paddle.static.data("rl", [len(references)], "int64")
            loss_fn = spec.build(options, 6, 5)
            extra = (paddle.static.data("u", [None, None], "float32"),) if spec.takes_noise else ()
            loss = loss_fn(x, y, *extra, references=r, reference_labels=rl)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        feed = {"x": features.astype("float32"), "y": labels, "r": references.astype("float32"), "rl": reference_labels}
        if spec.takes_noise:
            feed["u"] = noise.astype("float32")
        got, = exe.run(main, feed=feed, fetch_list=[loss])
    f32 = features.astype("float32").astype(float), references.astype("float32").astype(float)
    numpy_loss = {"batchhardtripletloss": lambda *a: np_batch_hard(*a, margin=0.3),
                  "quadrupletloss": lambda *a: np_quadruplet(*a, margin=0.3), "emlloss": np_eml,
                  "rankedlistloss": np_rll, "multisimilarityloss": np_ms,
                  "marginloss": lambda *a: np_margin(*a, noise.astype("float32").astype(float),
                                                     np.full(5, 1.2))}[name]
    assert got.item() == pytest.approx(numpy_loss(f32[0], labels, f32[1], reference_labels), rel=1e-4, abs=1e-6)
