"""What the loss tests share: numpy references of every loss (loops over anchors and candidates, not
masks), batches, and the finite-difference gradient check.

Each reference takes the loss's settings as keywords named like its settings dataclass's fields, so
a test at the defaults passes `**asdict(SomeParams())`. The pair losses also take an optional
reference set (references [R, D], reference_labels [R]): candidates are the batch followed by the
references, a reference labelled -1 takes part in no pair (losses/common.py, candidates).
"""
import contextlib
import math

import numpy as np
import paddle
import pytest
from numeric import numeric_gradient

# (P classes, K per class, D) of the P x K batches the forward values are checked on.
SHAPES = [(3, 2, 4), (4, 2, 16), (2, 4, 4), (4, 4, 16), (3, 4, 4), (5, 3, 8)]


# ---------------------------------------------------------------- batches and tensors

def pk_labels(classes, per_class, spread=True):
    """P x K labels; spread: arbitrary, non-contiguous ids, else 0..classes-1."""
    ids = np.arange(classes) * 7 + 3 if spread else np.arange(classes)
    return np.repeat(ids, per_class)


def triplet_labels(triplets, rng):
    rows = []
    for _ in range(triplets):
        anchor, negative = rng.choice(20, size=2, replace=False)
        rows += [anchor, anchor, negative]
    return np.array(rows)


def uniform_noise(rng, rows, columns=None):
    """Uniform noise in (0, 1) [rows, columns] for the losses that sample pairs (default square)."""
    return rng.uniform(1e-6, 1 - 1e-6, size=(rows, rows if columns is None else columns))


def tensor(array):
    return paddle.to_tensor(array, stop_gradient=False)


def value(loss):
    assert loss.shape == [], "a loss must be a scalar tensor"
    return loss.item()


@contextlib.contextmanager
def default_dtype(dtype):
    """Parameters of layers built inside are of `dtype` (float64 for finite differences)."""
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        yield
    finally:
        paddle.set_default_dtype(previous)


def assert_gradient(paddle_loss, numpy_loss, x):
    """Paddle's gradient of paddle_loss at x (float64) equals the central difference of numpy_loss."""
    x_tensor = tensor(x)
    paddle_loss(x_tensor).backward()
    numeric = numeric_gradient(numpy_loss, x)
    assert np.abs(numeric).max() > 1e-3, "the case must have a non-zero gradient"
    np.testing.assert_allclose(x_tensor.grad.numpy(), numeric, rtol=1e-5, atol=1e-7)


def assert_shuffle_invariant(loss_of, features, labels, rng):
    """loss_of(features, labels, order) (order: where each row came from) is the same for the batch in
    order and shuffled by `rng`, and not 0 (so that the check means something)."""
    order = rng.permutation(len(labels))
    in_order = loss_of(features, labels, np.arange(len(labels)))
    shuffled = loss_of(features[order], labels[order], order)
    assert in_order > 0
    assert shuffled == pytest.approx(in_order, rel=1e-12)


# ---------------------------------------------------------------- numpy building blocks

def np_normalize(x, axis=1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def np_sqdist(a, b):
    return float(np.sum((a - b) ** 2))


def np_distance(a, b):
    return math.sqrt(np_sqdist(a, b))


def np_candidates(features, labels, references=None, reference_labels=None, transform=lambda x: x):
    """(candidate rows, candidate labels): the batch, then the references when given."""
    if references is None:
        return transform(features), labels
    return (np.concatenate([transform(features), transform(references)]),
            np.concatenate([labels, reference_labels]))


def pairs_of(labels, candidate_labels, i):
    """(positive candidates, negative candidates) of anchor i: j != i, same / other class, label -1 left out."""
    positives = [j for j, c in enumerate(candidate_labels) if c != -1 and j != i and c == labels[i]]
    negatives = [j for j, c in enumerate(candidate_labels) if c != -1 and c != labels[i]]
    return positives, negatives


def np_log_softmax(row):
    shifted = row - row.max()
    return shifted - math.log(np.sum(np.exp(shifted)))


def np_log1p_sum_exp(xs):
    """log(1 + sum exp(x)) written as a logsumexp, so that large scales cannot overflow."""
    top = max(0.0, max(xs))
    return top + math.log(math.exp(-top) + sum(math.exp(x - top) for x in xs))


# ---------------------------------------------------------------- the losses

def np_triplet(features, *, margin):
    f = np_normalize(features)
    terms = [max(np_sqdist(f[t], f[t + 1]) - np_sqdist(f[t], f[t + 2]) + margin, 0.0)
             for t in range(0, len(f), 3)]
    return np.mean(terms)


def np_batch_hard(features, labels, references=None, reference_labels=None, *, margin):
    cand, cand_labels = np_candidates(features, labels, references, reference_labels, np_normalize)
    terms = []
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, cand_labels, i)
        terms.append(max(max(np_sqdist(cand[i], cand[j]) for j in positives)
                         - min(np_sqdist(cand[i], cand[k]) for k in negatives) + margin, 0.0))
    return np.mean(terms)


def np_quadruplet(features, labels, references=None, reference_labels=None, *, margin):
    cand, cand_labels = np_candidates(features, labels, references, reference_labels, np_normalize)
    hardest_positive, hardest_negative = -math.inf, math.inf
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, cand_labels, i)
        hardest_positive = max([hardest_positive] + [np_sqdist(cand[i], cand[j]) for j in positives])
        hardest_negative = min([hardest_negative] + [np_sqdist(cand[i], cand[k]) for k in negatives])
    return max(hardest_positive - hardest_negative + margin, 0.0)


def np_eml(features, labels, references=None, reference_labels=None, beta=100000.0, threshold=20.0):
    """EML on squared distances of the raw features; beta and threshold are the loss's constants."""
    def surrogate(theta, bias):
        return math.log(1 + beta * theta * math.exp(bias)) / math.log(1 + beta)

    cand, cand_labels = np_candidates(features, labels, references, reference_labels)
    terms = []
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, cand_labels, i)
        p = np.array([np_sqdist(cand[i], cand[j]) for j in positives])
        n = np.array([np_sqdist(cand[i], cand[k]) for k in negatives])
        theta = np.mean(np.exp(p - p.max())) * np.mean(np.exp(n.min() - n))
        bias = p.max() - n.min()
        terms.append(surrogate(theta, min(bias, threshold))
                     + (math.log(theta) + max(bias, threshold) + math.log(beta)) / math.log(1 + beta)
                     - surrogate(theta, threshold))
    return np.mean(terms)


def np_eml_biases(features, labels):
    """max positive - min negative squared distance of each anchor (the EML's bias)."""
    biases = []
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, labels, i)
        biases.append(max(np_sqdist(features[i], features[j]) for j in positives)
                      - min(np_sqdist(features[i], features[k]) for k in negatives))
    return biases


def np_npairs(features, labels, *, reg_lambda):
    anchors, positives = features[0::2], features[1::2]
    anchor_labels, positive_labels = labels[0::2], labels[1::2]
    cross_entropy = []
    for i, anchor in enumerate(anchors):
        target = (positive_labels == anchor_labels[i]).astype(float)
        target /= target.sum()
        cross_entropy.append(-np.sum(target * np_log_softmax(positives @ anchor)))
    reg = np.mean(np.sum(anchors ** 2, axis=1)) + np.mean(np.sum(positives ** 2, axis=1))
    return np.mean(cross_entropy) + 0.25 * reg_lambda * reg


def np_arcmargin(cosine, labels, *, margin, scale, easy_margin):
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


def np_cosface(cosine, labels, *, margin, scale):
    terms = []
    for row, label in zip(cosine, labels):
        logits = scale * row.copy()
        logits[label] = scale * (row[label] - margin)
        terms.append(-np_log_softmax(logits)[label])
    return np.mean(terms)


def np_softmax_loss(logits, labels, smoothing):
    classes = logits.shape[1]
    terms = []
    for row, label in zip(logits, labels):
        target = np.full(classes, smoothing / classes)
        target[label] += 1 - smoothing
        terms.append(-np.sum(target * np_log_softmax(row)))
    return np.mean(terms)


def np_rll(features, labels, references=None, reference_labels=None, *, alpha, margin, temperature, balance,
           weights_at=None):
    """Ranked list loss; the negative weights come from `weights_at` (default: `features` themselves).

    Evaluating it at perturbed features with weights_at fixed gives the derivative with the
    weights held constant, which is what the loss's gradient is.
    """
    cand, cand_labels = np_candidates(features, labels, references, reference_labels, np_normalize)
    weight_cand = cand if weights_at is None else np_candidates(weights_at, labels, references, reference_labels,
                                                                np_normalize)[0]
    terms = []
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, cand_labels, i)
        distance = {j: np_distance(cand[i], cand[j]) for j in positives + negatives}
        positive_costs = [distance[j] - (alpha - margin) for j in positives if distance[j] > alpha - margin]
        hard = [k for k in negatives if distance[k] < alpha]
        weights = [math.exp(temperature * (alpha - np_distance(weight_cand[i], weight_cand[k]))) for k in hard]
        positive_loss = np.mean(positive_costs) if positive_costs else 0.0
        negative_loss = (np.dot(weights, [alpha - distance[k] for k in hard]) / np.sum(weights)) if hard else 0.0
        terms.append(positive_loss + balance * negative_loss)
    return np.mean(terms)


def np_ms(features, labels, references=None, reference_labels=None, *, alpha, beta, base, epsilon):
    cand, cand_labels = np_candidates(features, labels, references, reference_labels, np_normalize)
    total = 0.0
    for i in range(len(labels)):
        positive_rows, negative_rows = pairs_of(labels, cand_labels, i)
        positives = [float(cand[i] @ cand[j]) for j in positive_rows]
        negatives = [float(cand[i] @ cand[k]) for k in negative_rows]
        mined_negatives = [s for s in negatives if s + epsilon > min(positives)]
        mined_positives = [s for s in positives if s - epsilon < max(negatives)]
        if mined_negatives and mined_positives:
            total += np_log1p_sum_exp([-alpha * (s - base) for s in mined_positives]) / alpha
            total += np_log1p_sum_exp([beta * (s - base) for s in mined_negatives]) / beta
    return total / len(labels)


def np_log_weight(d, dim, cutoff):
    d = max(d, cutoff)
    return (2 - dim) * math.log(d) - 0.5 * (dim - 3) * math.log(max(1 - d * d / 4, 1e-8))


def np_sampled_negatives(features, labels, noise, references=None, reference_labels=None, *, cutoff):
    """{anchor: [negatives]}: per row, the #positives negatives of largest log weight + Gumbel noise."""
    cand, cand_labels = np_candidates(features, labels, references, reference_labels, np_normalize)
    chosen = {}
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, cand_labels, i)
        score = {k: np_log_weight(np_distance(cand[i], cand[k]), cand.shape[1], cutoff)
                 - math.log(-math.log(noise[i, k])) for k in negatives}
        chosen[i] = sorted(negatives, key=lambda k: -score[k])[:len(positives)]
    return chosen


def np_margin(features, labels, noise, beta, references=None, reference_labels=None, *, alpha, cutoff,
              per_class=True, weights_at=None):
    """Margin loss over all positive pairs and the sampled negatives (drawn at `weights_at`, default the
    features); `beta` holds one boundary per class id (per_class) or one shared value."""
    cand, cand_labels = np_candidates(features, labels, references, reference_labels, np_normalize)
    draw_at = features if weights_at is None else weights_at
    chosen = np_sampled_negatives(draw_at, labels, noise, references, reference_labels, cutoff=cutoff)
    pair_losses = []
    for i in range(len(labels)):
        positives, _ = pairs_of(labels, cand_labels, i)
        b = beta[labels[i]] if per_class else beta[0]
        pair_losses += [max(alpha + np_distance(cand[i], cand[j]) - b, 0.0) for j in positives]
        pair_losses += [max(alpha + b - np_distance(cand[i], cand[k]), 0.0) for k in chosen[i]]
    active = [x for x in pair_losses if x > 0]
    return sum(active) / len(active) if active else 0.0


def np_contrastive(features, labels, references=None, reference_labels=None, *, positive_margin, negative_margin):
    """PML's ContrastiveLoss: mean of the non-zero positive-pair hinges plus mean of the non-zero negative ones."""
    cand, cand_labels = np_candidates(features, labels, references, reference_labels, np_normalize)
    positive_costs, negative_costs = [], []
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, cand_labels, i)
        positive_costs += [max(np_distance(cand[i], cand[j]) - positive_margin, 0.0) for j in positives]
        negative_costs += [max(negative_margin - np_distance(cand[i], cand[k]), 0.0) for k in negatives]

    def mean_of_nonzero(costs):
        nonzero = [c for c in costs if c > 0]
        return sum(nonzero) / len(nonzero) if nonzero else 0.0
    return mean_of_nonzero(positive_costs) + mean_of_nonzero(negative_costs)


def np_logsumexp(xs):
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def np_circle(features, labels, references=None, reference_labels=None, *, margin, gamma, weights_at=None):
    """Circle loss per anchor, averaged over the anchors with a non-zero loss. The weights a_p, a_n come
    from `weights_at` (default: the features): held fixed, they give the loss's gradient."""
    cand, cand_labels = np_candidates(features, labels, references, reference_labels, np_normalize)
    weight_cand = cand if weights_at is None else np_candidates(weights_at, labels, references, reference_labels,
                                                                np_normalize)[0]
    terms = []
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, cand_labels, i)
        if not positives or not negatives:
            continue
        positive_logits = [-gamma * max(1 + margin - weight_cand[i] @ weight_cand[j], 0.0)
                           * (cand[i] @ cand[j] - (1 - margin)) for j in positives]
        negative_logits = [gamma * max(weight_cand[i] @ weight_cand[k] + margin, 0.0)
                           * (cand[i] @ cand[k] - margin) for k in negatives]
        x = np_logsumexp(positive_logits) + np_logsumexp(negative_logits)
        terms.append(max(x, 0.0) + math.log1p(math.exp(-abs(x))))
    nonzero = [t for t in terms if t > 0]
    return sum(nonzero) / len(nonzero) if nonzero else 0.0


def np_supcon(features, labels, references=None, reference_labels=None, *, temperature):
    """SupCon's L_out per anchor (mean over its positives of -log softmax over all other rows), averaged over
    the anchors with a non-zero loss (anchors without a positive add nothing)."""
    cand, cand_labels = np_candidates(features, labels, references, reference_labels, np_normalize)
    terms = []
    for i in range(len(labels)):
        positives, negatives = pairs_of(labels, cand_labels, i)
        if not positives:
            continue
        logit = {j: float(cand[i] @ cand[j]) / temperature for j in positives + negatives}
        log_denominator = np_logsumexp(list(logit.values()))
        terms.append(-np.mean([logit[p] - log_denominator for p in positives]))
    nonzero = [t for t in terms if t > 0]
    return sum(nonzero) / len(nonzero) if nonzero else 0.0


def np_proxy_anchor(features, labels, proxies, *, alpha, margin):
    """Proxy anchor loss: proxies in the batch as anchors of their class's rows, every proxy against the others."""
    x, p = np_normalize(features), np_normalize(proxies)
    positive_terms, negative_terms = [], []
    for c in range(len(p)):
        members = [i for i in range(len(labels)) if labels[i] == c]
        others = [i for i in range(len(labels)) if labels[i] != c]
        if members:
            positive_terms.append(np_log1p_sum_exp([-alpha * (float(x[i] @ p[c]) - margin) for i in members]))
        negative_terms.append(np_log1p_sum_exp([alpha * (float(x[i] @ p[c]) + margin) for i in others])
                              if others else 0.0)
    return np.mean(positive_terms) + np.mean(negative_terms)


def np_proxy_nca(features, labels, proxies, *, scale):
    """Proxy-NCA as PML: -log softmax over all proxies (target included) of -scale * squared distance."""
    x, p = np_normalize(features), np_normalize(proxies)
    return np.mean([-np_log_softmax(np.array([-scale * np_sqdist(x[i], p[c]) for c in range(len(p))]))[labels[i]]
                    for i in range(len(labels))])


def np_subcenter_arcface(features, labels, weight, *, sub_centers, margin, scale):
    """ArcFace on, per class, the largest cosine between the row and the class's sub-centres (the columns
    c * K ... c * K + K - 1 of `weight` [D, C * K])."""
    cosine = np_normalize(features) @ np_normalize(weight, axis=0)
    nearest = np.array([[max(row[c * sub_centers:(c + 1) * sub_centers]) for c in range(len(row) // sub_centers)]
                        for row in cosine])
    return np_arcmargin(nearest, labels, margin=margin, scale=scale, easy_margin=False)


def np_softtriple(features, labels, weight, *, centers, scale, gamma, tau, margin):
    """SoftTriple: per row and class, S = sum_k softmax_k(cos_k / gamma) cos_k over the class's centres (columns
    c * K ... c * K + K - 1 of `weight`); cross-entropy of scale * (S - margin on the true class); plus tau times
    the sum over each class's centre pairs t < s of sqrt(2 + 1e-5 - 2 cos(w_t, w_s)) / (C K (K - 1))."""
    x, w = np_normalize(features), np_normalize(weight, axis=0)
    classes = w.shape[1] // centers
    terms = []
    for i, label in enumerate(labels):
        similarity = []
        for c in range(classes):
            cosines = np.array([float(x[i] @ w[:, c * centers + k]) for k in range(centers)])
            weights = np.exp(np_log_softmax(cosines / gamma))
            similarity.append(float(weights @ cosines))
        logits = scale * np.array(similarity)
        logits[label] -= scale * margin
        terms.append(-np_log_softmax(logits)[label])
    spread = 0.0
    for c in range(classes):
        for t in range(centers):
            for s in range(t + 1, centers):
                a, b = w[:, c * centers + t], w[:, c * centers + s]
                spread += math.sqrt(2 + 1e-5 - 2 * float(a @ b))
    regulariser = spread / (classes * centers * (centers - 1)) if centers > 1 else 0.0
    return np.mean(terms) + tau * regulariser


def np_center(features, labels, centers):
    """Center loss: mean over rows of the squared distance to the row's class centre (raw features)."""
    return np.mean([np_sqdist(features[i], centers[labels[i]]) for i in range(len(labels))])


def assert_checkpoint_keeps(name, parameter, folder):
    """Loss `name`'s learned `parameter` (its static name) is saved by a checkpoint and restored into a fresh
    program: a Linear(5 -> 4) embedding and the loss take one SGD step, engine.checkpoint saves the program,
    a second program starts from other random values and gets the trained ones back from the checkpoint."""
    import losses
    from engine import checkpoint
    from paddle_modes import static_mode

    labels = np.array([0, 2, 1, 1, 0, 2])
    inputs = np.random.default_rng(0).normal(size=(6, 5)).astype("float32")

    def build(seed):
        paddle.seed(seed)
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
            x = paddle.static.data("x", [None, 5], "float32")
            y = paddle.static.data("y", [None], "int64")
            loss = losses.get(name).build_loss(4, 3)(paddle.nn.Linear(5, 4)(x), y)
            paddle.optimizer.SGD(0.1).minimize(loss)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        return main, exe

    def current():
        return np.array(paddle.static.global_scope().find_var(parameter).get_tensor())

    with static_mode():
        main, exe = build(seed=1)
        initial = current()
        exe.run(main, feed={"x": inputs, "y": labels})
        trained = current()
        saved = checkpoint.save_checkpoint(main, str(folder), "1", {})
        fresh, _ = build(seed=2)
        assert np.any(current() != trained) and np.any(trained != initial)
        checkpoint.restore(fresh, saved)
        np.testing.assert_array_equal(current(), trained)
