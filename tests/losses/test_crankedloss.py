"""crankedloss and its k-means against numpy loops, eagerly and in a static Program; weights and groups are
constants for the gradient."""
from dataclasses import asdict

import numpy as np
import paddle
import pytest
from loss_checks import (assert_gradient, assert_shuffle_invariant, np_distance, np_normalize, np_sqdist, pk_labels,
                         tensor, uniform_noise, value)
from paddle_modes import static_loss_step

import losses
from losses.crankedloss import crankedloss, kmeans_groups
from losses.rankedlistloss import RankedListParams
from utility.errors import UserError

DEFAULTS = asdict(RankedListParams())


def np_kmeans_groups(points, noise, clusters=8, steps=10):
    """Lloyd's k-means from the rows ranked first by noise[0] (repeated when there are fewer rows than clusters)."""
    order = np.argsort(noise[0, :len(points)], kind="stable")
    centroids = np.array([points[order[c % len(points)]] for c in range(clusters)])

    def nearest():
        return np.array([int(np.argmin([np_sqdist(p, c) for c in centroids])) for p in points])
    for _ in range(steps):
        assigned = nearest()
        for c in range(clusters):
            if np.any(assigned == c):
                centroids[c] = points[assigned == c].mean(axis=0)
    return nearest()


def np_cranked(features, labels, groups, *, alpha, margin, temperature, balance, weights_at=None):
    """The author's sums: per class the mean of [d + margin - alpha]_+ over its n x n pairs; per group of more than
    3 rows the mean over its anchors of the ranked-list negative term over the negatives inside the group (weights
    from `weights_at`, default the features)."""
    x = np_normalize(features)
    w = x if weights_at is None else np_normalize(weights_at)
    positive = 0.0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        costs = [max(np_distance(x[i], x[j]) + margin - alpha, 0.0) for i in members for j in members]
        positive += sum(costs) / len(members) ** 2
    negative = 0.0
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        if len(members) <= 3:
            continue
        group_sum = 0.0  # an anchor without a hard negative adds 0
        for i in members:
            hard = [k for k in members if labels[k] != labels[i] and np_distance(x[i], x[k]) < alpha]
            if hard:
                weights = [np.exp(temperature * (alpha - np_distance(w[i], w[k]))) for k in hard]
                group_sum += np.dot(weights, [alpha - np_distance(x[i], x[k]) for k in hard]) / sum(weights)
        negative += group_sum / len(members)
    return positive + balance * negative


def batch(seed, classes, per_class, dim):
    rng = np.random.default_rng(seed)
    labels = pk_labels(classes, per_class)
    return rng.normal(size=(len(labels), dim)), labels, uniform_noise(rng, len(labels))


@pytest.mark.parametrize("rows,dim,steps", [(5, 3, 10), (8, 4, 10), (24, 4, 10), (40, 16, 10), (40, 16, 1)])
def test_kmeans_matches_reference(rows, dim, steps):
    rng = np.random.default_rng(rows + dim)
    points, noise = np_normalize(rng.normal(size=(rows, dim))), uniform_noise(rng, rows).astype("float32")
    groups = kmeans_groups(paddle.to_tensor(points), paddle.to_tensor(noise), steps=steps).numpy()
    np.testing.assert_array_equal(groups, np_kmeans_groups(points, noise, steps=steps))
    assert len(np.unique(groups)) == min(rows, 8) or rows > 8


def test_kmeans_separates_far_apart_blobs():
    # Two tight blobs at opposite poles: whichever rows start the centroids, no group takes rows of both.
    rng = np.random.default_rng(3)
    blobs = np.concatenate([[1, 0, 0] + 0.01 * rng.normal(size=(12, 3)), [-1, 0, 0] + 0.01 * rng.normal(size=(12, 3))])
    for seed in range(5):
        groups = kmeans_groups(paddle.to_tensor(blobs), paddle.to_tensor(uniform_noise(np.random.default_rng(seed),
                                                                                       24))).numpy()
        assert not set(groups[:12]) & set(groups[12:])


@pytest.mark.parametrize("classes,per_class,dim", [(3, 2, 4), (4, 4, 3), (6, 4, 4), (8, 5, 8)])
def test_matches_reference_at_the_defaults(classes, per_class, dim):
    features, labels, noise = batch(classes * 100 + per_class * 10 + dim, classes, per_class, dim)
    noise = noise.astype("float32")
    loss = losses.get("crankedloss").build_loss(dim, classes)(tensor(features), paddle.to_tensor(labels),
                                                               paddle.to_tensor(noise))
    groups = np_kmeans_groups(np_normalize(features), noise)
    assert value(loss) == pytest.approx(np_cranked(features, labels, groups, **DEFAULTS), rel=1e-9)


@pytest.mark.parametrize("settings", [dict(alpha=1.0, margin=0.2, temperature=3.0, balance=0.5),
                                      dict(alpha=1.6, margin=0.8, temperature=30.0, balance=2.0)])
def test_other_settings(settings):
    features, labels, noise = batch(1, 6, 4, 3)
    loss = crankedloss(tensor(features), paddle.to_tensor(labels), paddle.to_tensor(noise), **settings)
    groups = np_kmeans_groups(np_normalize(features), noise)
    assert value(loss) == pytest.approx(np_cranked(features, labels, groups, **settings), rel=1e-9)


def test_both_terms_are_active():
    # Guard for the tests above: the batches of 24 rows in 3-4 dimensions have groups of more than 3 images.
    features, labels, noise = batch(1, 6, 4, 3)
    groups = np_kmeans_groups(np_normalize(features), noise)
    positive = np_cranked(features, labels, groups, **{**DEFAULTS, "balance": 0.0})
    assert np.bincount(groups).max() > 3
    assert positive > 0.05 and np_cranked(features, labels, groups, **DEFAULTS) - positive > 0.05


def test_negatives_outside_the_group_cost_nothing():
    # The same batch with every row in one group (the plain ranked-list negatives, summed per anchor / B) costs more.
    features, labels, noise = batch(2, 6, 4, 3)
    groups = np_kmeans_groups(np_normalize(features), noise)
    one_group = np.zeros_like(groups)
    assert len(np.unique(groups)) > 1
    assert np_cranked(features, labels, one_group, **DEFAULTS) != pytest.approx(
        np_cranked(features, labels, groups, **DEFAULTS), rel=1e-3)


def test_gradient_holds_weights_and_groups_constant():
    features, labels, noise = batch(10, 5, 4, 3)
    groups = np_kmeans_groups(np_normalize(features), noise)
    assert np.bincount(groups).max() > 3
    settings = asdict(RankedListParams(temperature=3.0))
    y, u = paddle.to_tensor(labels), paddle.to_tensor(noise)
    assert_gradient(lambda f: crankedloss(f, y, u, **settings),
                    lambda f: np_cranked(f, labels, groups, **settings, weights_at=features), features)


def test_shuffled_batch_gives_the_same_loss():
    # Rows and their noise shuffled together: the same groups, so the same loss (nothing depends on row positions).
    features, labels, noise = batch(4, 6, 4, 3)
    assert_shuffle_invariant(
        lambda f, y, order: value(crankedloss(tensor(f), paddle.to_tensor(y),
                                              paddle.to_tensor(noise[np.ix_(order, order)]), **DEFAULTS)),
        features, labels, np.random.default_rng(4))


@pytest.mark.parametrize("labels,message", [([0, 0, 1, 1, 2], "crankedloss: class 2 has a single image"),
                                            ([1, 1, 1, 1], "no anchor has a negative")])
def test_bad_batch_raises_eagerly(labels, message):
    with pytest.raises(UserError, match=message):
        crankedloss(paddle.randn([len(labels), 4]), paddle.to_tensor(np.array(labels)),
                    paddle.rand([len(labels), len(labels)]), **DEFAULTS)


def test_static_program_trains_one_step():
    # The engine feeds the noise of the iteration (LossSpec.takes_noise); the groups come from it in the program.
    labels = pk_labels(6, 4)
    rng = np.random.default_rng(15)
    inputs, noise = rng.normal(size=(len(labels), 5)).astype("float32"), uniform_noise(rng, len(labels))
    noise = noise.astype("float32")
    first, embedding, _, _ = static_loss_step("crankedloss", labels, inputs, noise)
    groups = np_kmeans_groups(np_normalize(embedding), noise)
    assert np.bincount(groups).max() > 3
    assert first == pytest.approx(np_cranked(embedding, labels, groups, **DEFAULTS), rel=1e-4)
    assert paddle.in_dynamic_mode()
