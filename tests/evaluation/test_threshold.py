"""evaluation/threshold.py against exact sorting of every pair distance."""
import math

import numpy as np
import pytest

from cli.args import parse_args
from evaluation.threshold import draw_threshold_plot, verification_threshold
from utility.errors import UserError


def threshold_summary(result):
    """The scalars of a verification_threshold() result (no histograms)."""
    return {key: value for key, value in result.items() if not isinstance(value, np.ndarray)}


def all_pairs(features, labels, feat_norm=True):
    """(distance, same) of every pair i < j, float64 loops."""
    x = np.asarray(features, np.float64)
    if feat_norm:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    pairs = [(math.sqrt(float(np.sum((x[i] - x[j]) ** 2))), labels[i] == labels[j])
             for i in range(len(x)) for j in range(i + 1, len(x))]
    return np.array([d for d, _ in pairs]), np.array([s for _, s in pairs])


def accuracy_at(distances, same, threshold):
    return float(np.mean((distances < threshold) == same))


def best_accuracy(distances, same):
    """Exact maximum over every threshold: just above each distance, and below all."""
    candidates = np.concatenate([[0.0], np.nextafter(np.unique(distances), np.inf)])
    return max(accuracy_at(distances, same, t) for t in candidates)


def tpr_at_fpr(distances, same, target):
    negatives = np.sort(distances[~same])
    allowed = int(np.floor(target * len(negatives)))
    cut = negatives[allowed] if allowed < len(negatives) else np.inf
    return float(np.mean(distances[same] < cut))


def clustered(seed, n=120, classes=10, dim=6, noise=1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim)) * 1.5
    return (centres[labels] + rng.normal(scale=noise, size=(n, dim))).astype(np.float32), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("feat_norm", [True, False])
def test_matches_exact_pairs(seed, feat_norm):
    features, labels = clustered(seed)
    result = verification_threshold(features, labels, feat_norm=feat_norm, block_size=17)
    distances, same = all_pairs(features, labels, feat_norm)
    assert result["num_positive_pairs"] == same.sum() and result["num_negative_pairs"] == (~same).sum()
    assert result["accuracy"] == pytest.approx(best_accuracy(distances, same), abs=1e-12)
    assert accuracy_at(distances, same, result["threshold"]) == pytest.approx(result["accuracy"], abs=1e-12)
    assert result["tpr_at_fpr"] == pytest.approx(tpr_at_fpr(distances, same, 1e-3), abs=1e-12)
    # float32 distances are within ~1e-6 of these float64 ones: the negative that sets the edge may sit on it.
    assert (distances[~same] < result["threshold_at_fpr"] - 1e-6).sum() <= math.floor(1e-3 * (~same).sum())
    assert 0.5 < result["accuracy"] < 1 and 0 < result["tpr_at_fpr"] < 1
    assert result["pos_hist"].sum() + result["neg_hist"].sum() == len(distances)


def test_blocks_do_not_change_results():
    # Matrix products of other shapes round differently in the last float32 bit, which can move a
    # pair into the next 2e-6-wide bin: the histograms agree up to a few such pairs.
    features, labels = clustered(3, n=90)
    results = [verification_threshold(features, labels, block_size=b) for b in (1, 7, 90, None)]
    for other in results[1:]:
        for key in ("pos_hist", "neg_hist"):
            assert np.abs(np.cumsum(other[key]) - np.cumsum(results[0][key])).max() <= 2
        for key in ("threshold", "accuracy", "tpr_at_fpr"):
            assert other[key] == pytest.approx(results[0][key], abs=1e-4)


def test_separated_classes_put_the_threshold_in_the_gap():
    # Same-class pairs at distance 1, different-class pairs at distance >= 9: any t in (1, 9] is perfect.
    features = np.array([[0, 0], [1, 0], [10, 0], [11, 0], [30, 0]], np.float32)
    labels = np.array([1, 1, 2, 2, 3])
    result = verification_threshold(features, labels, feat_norm=False)
    assert result["accuracy"] == 1.0 and result["tpr_at_fpr"] == 1.0
    assert result["threshold"] == pytest.approx(5.0, abs=1e-4)  # the middle of the gap
    assert result["bin_width"] == pytest.approx(2 * 30 * (1 + 1e-6) / 2**20)


def test_ignored_labels_and_bad_input():
    features, labels = clustered(4, n=40)
    junk = labels.copy()
    junk[:5] = -1
    kept = junk != -1
    assert threshold_summary(verification_threshold(features, junk, ignore_labels=(-1,))) == \
        threshold_summary(verification_threshold(features[kept], labels[kept]))
    with pytest.raises(ValueError, match="same-class and different-class"):
        verification_threshold(features[:3], [1, 2, 3])
    with pytest.raises(ValueError, match="labels of shape"):
        verification_threshold(features, labels[:-1])


def test_summary_is_json_ready():
    import json

    features, labels = clustered(5, n=30)
    summary = threshold_summary(verification_threshold(features, labels))
    assert set(summary) == {"threshold", "accuracy", "tpr_at_fpr", "threshold_at_fpr", "target_fpr",
                            "num_positive_pairs", "num_negative_pairs", "bin_width", "hist_max"}
    json.dumps(summary)


def test_plot_file_is_written(tmp_path):
    from PIL import Image

    features, labels = clustered(6, n=60)
    result = verification_threshold(features, labels)
    path = tmp_path / "threshold.png"
    draw_threshold_plot(result["pos_hist"], result["neg_hist"], result["threshold"], str(path),
                        hist_max=result["hist_max"], accuracy=result["accuracy"])
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (700, 400)
        # Not a blank picture: the bars are there (green positives, red negatives).
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    assert ((pixels[:, 1] - pixels[:, 0]) > 60).sum() > 100 and ((pixels[:, 0] - pixels[:, 1]) > 60).sum() > 100


def test_threshold_plot_flag_turns_threshold_on(tmp_path):
    from cli.config import resolve

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    flags = [f"--pretrained_model={checkpoint}", "--val_list=v.txt"]
    assert resolve("eval", flags + ["--threshold_plot=t.png"]).threshold is True
    assert resolve("eval", flags).threshold is False
    with pytest.raises(UserError, match="--threshold True"):
        parse_args("eval", ["--threshold_plot=t.png", "--threshold=False"])
