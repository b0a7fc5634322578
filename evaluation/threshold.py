"""Verification threshold: the embedding distance below which two images are called "same class".

Over every pair i < j of a labelled set, a pair is positive when the labels are equal and
negative otherwise, and is predicted "same" when its distance is below the threshold t.
verification_threshold() finds the t of highest accuracy (correct pairs / all pairs) and
the true-positive rate at a false-positive rate of 1e-3.

Distance. Euclidean (not squared) between the embeddings, L2-normalised first with
feat_norm (then every distance is in [0, 2]); without, in [0, 2 x the largest norm].

Scale and precision. The N (N - 1) / 2 distances are computed a block of rows at a
time (never an N x N matrix) and counted in two histograms of NUM_BINS (2^20) equal bins
over that range: a bin is 2 / 2^20 ~ 1.9e-6 wide for normalised embeddings. Thresholds are
bin edges, and the accuracy and rates reported at an edge are exact for the float32
distances (a pair is on the "same" side of edge t exactly when its distance is < t).
Searching edges only can miss a better threshold inside a bin by at most the pairs
in that one bin. The float32 distances are within about 1e-6 of the exact ones (so a pair
that close to an edge may be counted on either side of it, and another block size, which
rounds the matrix products differently, can move such a pair to the next bin).
Memory: the two histograms (16 MiB) and one block (under BLOCK_BYTES).

Ties. Several edges can give the best accuracy (e.g. a gap between the classes): the
threshold reported is the middle edge of the first run of best edges.
"""
import numpy as np

from evaluation.distances import as_matrix, l2_normalized
from utility.files import write_atomically

NUM_BINS = 2**20
BLOCK_BYTES = 128 * 2**20
TARGET_FPR = 1e-3
# Per cell of a block: float32 distance, int64 bin, the mask and temporaries.
_BYTES_PER_CELL = 24
PLOT_BINS = 200  # bars in the picture (the fine histogram is summed into these)


def verification_threshold(features, labels, feat_norm=True, block_size=None, num_bins=NUM_BINS,
                           target_fpr=TARGET_FPR, ignore_labels=()):
    """Best-accuracy distance threshold over all pairs, and TPR at a fixed FPR.

    Args:
        features: [N, D] embeddings.
        labels: [N] integer labels.
        feat_norm: L2-normalise first.
        block_size: rows per block; default keeps a block under BLOCK_BYTES.
        num_bins: histogram bins over [0, largest possible distance].
        target_fpr: the false-positive rate of "tpr_at_fpr".
        ignore_labels: rows with these labels take part in no pair (e.g. -1 junk).

    Returns:
        {"threshold", "accuracy", "tpr_at_fpr", "threshold_at_fpr", "target_fpr",
         "num_positive_pairs", "num_negative_pairs", "bin_width", "hist_max",
         "pos_hist", "neg_hist"}: pos_hist/neg_hist are int64 [num_bins] counts of
        same-class / different-class pairs over [0, hist_max]. "threshold_at_fpr" is the
        largest edge whose false-positive rate is at most target_fpr.
    """
    features = as_matrix(features, "features")
    labels = np.asarray(labels)
    if labels.shape != (len(features),):
        raise ValueError(f"{len(features)} features but labels of shape {labels.shape}")
    if len(ignore_labels):
        kept = ~np.isin(labels, list(ignore_labels))
        features, labels = features[kept], labels[kept]
    if feat_norm:
        features = l2_normalized(features)
    norms = np.einsum("ij,ij->i", features, features)
    largest_norm = float(np.sqrt(norms.max())) if len(norms) else 0.0
    hist_max = 2.0 if feat_norm else max(2.0 * largest_norm, np.finfo(np.float32).tiny)
    # A hair more than the largest distance, so that float rounding never lands past the last bin.
    hist_max *= 1 + 1e-6
    width = hist_max / num_bins

    counts = np.zeros(2 * num_bins + 1, np.int64)  # negatives, then positives, then the unused cells
    rows = block_size or max(1, int(BLOCK_BYTES // (max(len(features), 1) * _BYTES_PER_CELL)))
    for start in range(0, len(features), rows):
        stop = min(start + rows, len(features))
        squared = features[start:stop] @ features[start:].T
        squared *= -2.0
        squared += norms[start:stop, None]
        squared += norms[None, start:]
        distance = np.sqrt(np.maximum(squared, 0.0, out=squared), out=squared)
        cells = np.minimum((distance / np.float32(width)).astype(np.int64), num_bins - 1)
        cells += num_bins * (labels[start:stop, None] == labels[None, start:])
        # Only pairs i < j: within the block's own columns, the lower triangle and diagonal go unused.
        within = stop - start
        cells[:, :within][np.tril(np.ones((within, within), bool))] = 2 * num_bins
        counts += np.bincount(cells.ravel(), minlength=2 * num_bins + 1)
    neg_hist, pos_hist = counts[:num_bins], counts[num_bins:2 * num_bins]
    return _choose(pos_hist, neg_hist, width, hist_max, target_fpr)


def _choose(pos_hist, neg_hist, width, hist_max, target_fpr):
    num_pos, num_neg = int(pos_hist.sum()), int(neg_hist.sum())
    if num_pos == 0 or num_neg == 0:
        raise ValueError(f"a threshold needs same-class and different-class pairs, got {num_pos} and {num_neg}")
    # Edge k (threshold k * width): pairs in bins < k are called "same".
    true_pos = np.concatenate([[0], np.cumsum(pos_hist)])
    false_pos = np.concatenate([[0], np.cumsum(neg_hist)])
    correct = true_pos + (num_neg - false_pos)
    best = correct.max()
    first = int(np.argmax(correct))
    run_end = first + int(np.argmin(correct[first:] == best)) if (correct[first:] != best).any() else len(correct)
    edge = (first + run_end - 1) // 2
    allowed = int(np.floor(target_fpr * num_neg))
    fpr_edge = int(np.searchsorted(false_pos, allowed, side="right")) - 1
    return {
        "threshold": edge * width,
        "accuracy": float(best) / (num_pos + num_neg),
        "tpr_at_fpr": float(true_pos[fpr_edge]) / num_pos,
        "threshold_at_fpr": fpr_edge * width,
        "target_fpr": target_fpr,
        "num_positive_pairs": num_pos,
        "num_negative_pairs": num_neg,
        "bin_width": width,
        "hist_max": hist_max,
        "pos_hist": pos_hist,
        "neg_hist": neg_hist,
    }


def draw_threshold_plot(pos_hist, neg_hist, threshold, path, hist_max=2.0, accuracy=None):
    """Write a PNG of the same-class and different-class distance distributions and the threshold.

    pos_hist/neg_hist: counts over equal bins of [0, hist_max] (as verification_threshold
    returns them); they are summed into about PLOT_BINS bars over the range the distances occupy and each
    drawn as a share of its own pairs, so that the far more numerous negatives do not hide
    the positives. Uses matplotlib's Agg canvas (no display needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pos_hist, neg_hist = np.asarray(pos_hist), np.asarray(neg_hist)
    if pos_hist.shape != neg_hist.shape or pos_hist.ndim != 1:
        raise ValueError(f"histograms must be two 1-D arrays of one length, got {pos_hist.shape} and {neg_hist.shape}")
    occupied = np.flatnonzero(pos_hist + neg_hist)
    first, last = (int(occupied[0]), int(occupied[-1]) + 1) if len(occupied) else (0, len(pos_hist))
    group = max(1, -(-(last - first) // PLOT_BINS))
    bars = -(-(last - first) // group)
    width = hist_max / len(pos_hist)

    def coarse(hist):
        padded = np.zeros(bars * group)
        padded[:last - first] = hist[first:last]
        summed = padded.reshape(bars, group).sum(axis=1)
        return summed / max(summed.sum(), 1)

    left = (first + np.arange(bars) * group) * width
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.bar(left, coarse(neg_hist), width=group * width, align="edge", alpha=0.55, color="tab:red",
             label=f"different class ({int(neg_hist.sum())} pairs)")
    axes.bar(left, coarse(pos_hist), width=group * width, align="edge", alpha=0.55, color="tab:green",
             label=f"same class ({int(pos_hist.sum())} pairs)")
    text = f"threshold {threshold:.4f}" + (f", accuracy {accuracy:.4f}" if accuracy is not None else "")
    axes.axvline(threshold, color="black", linestyle="--", label=text)
    axes.set_xlabel("Euclidean distance between embeddings")
    axes.set_ylabel("share of pairs")
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    write_atomically(path, lambda f: figure.savefig(f, format="png"))
