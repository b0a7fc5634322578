"""evaluation/reid.py against a loop-by-loop reference of the Market-1501 protocol."""
import math

import numpy as np
import pytest

from cli.args import parse_args
from embedding_references import fake_reid
from evaluation.reid import reid_metrics
from utility.errors import UserError


def reference(query, query_ids, query_cams, gallery, gallery_ids, gallery_cams, feat_norm=True, distances=None):
    """Plain loops: rank, drop junk (gallery -1, same identity + same camera), score what is left."""
    def unit(v):
        norm = math.sqrt(sum(float(x) * float(x) for x in v))
        return [float(x) / norm for x in v] if feat_norm and norm > 0 else [float(x) for x in v]

    aps, first_hits, skipped = [], [], 0
    for i in range(len(query)):
        q = unit(query[i])
        if distances is None:
            dist = [sum((a - b) ** 2 for a, b in zip(q, unit(gallery[j]))) for j in range(len(gallery))]
        else:
            dist = list(distances[i])
        ranking = sorted(range(len(gallery)), key=lambda j: (dist[j], j))
        kept = [j for j in ranking if not (gallery_ids[j] == -1 or
                                           (gallery_ids[j] == query_ids[i] and gallery_cams[j] == query_cams[i]))]
        good_positions = [pos for pos, j in enumerate(kept, start=1) if gallery_ids[j] == query_ids[i]]
        if not good_positions:
            skipped += 1
            continue
        aps.append(sum((n + 1) / pos for n, pos in enumerate(good_positions)) / len(good_positions))
        first_hits.append(good_positions[0])
    valid = len(aps)
    results = {"map": sum(aps) / valid if valid else float("nan")}
    for k in (1, 5, 10):
        results[f"cmc@{k}"] = sum(hit <= k for hit in first_hits) / valid if valid else float("nan")
    results.update(num_valid_queries=valid, num_skipped_queries=skipped, num_queries=len(query))
    return results


def assert_same(results, expected):
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(results[key]), key
        else:
            assert results[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("feat_norm", [True, False])
def test_matches_reference(seed, feat_norm):
    data = fake_reid(seed)
    results = reid_metrics(*data, feat_norm=feat_norm)
    assert_same(results, reference(*data, feat_norm=feat_norm))
    assert 0 < results["map"] < 1 and results["num_valid_queries"] > 0


@pytest.mark.parametrize("block_size", [1, 3, 7])
def test_block_size_does_not_change_results(block_size):
    data = fake_reid(3)
    assert reid_metrics(*data, block_size=block_size) == reid_metrics(*data)


def test_same_camera_images_of_the_identity_are_excluded():
    # The query's nearest image is its own identity under its own camera: junk, not a hit.
    query, query_ids, query_cams = np.array([[0.0, 0]]), np.array([7]), np.array([1])
    gallery = np.array([[0.0, 0.1], [0.0, 1.0], [0.0, 2.0]], np.float32)
    gallery_ids, gallery_cams = np.array([7, 3, 7]), np.array([1, 2, 2])
    results = reid_metrics(query, query_ids, query_cams, gallery, gallery_ids, gallery_cams, feat_norm=False)
    # Junk-free ranking: id 3 (wrong), id 7 camera 2 (good, rank 2): AP 1/2, CMC@1 0.
    assert results["map"] == pytest.approx(0.5) and results["cmc@1"] == 0 and results["cmc@5"] == 1
    # Same identity under another camera is what counts: same image, other camera, is a rank-1 hit.
    results = reid_metrics(query, query_ids, np.array([5]), gallery, gallery_ids, gallery_cams, feat_norm=False)
    assert results["map"] == pytest.approx((1 / 1 + 2 / 3) / 2) and results["cmc@1"] == 1


def test_junk_has_no_effect_and_distractors_count_as_wrong():
    query, query_ids, query_cams, gallery, gallery_ids, gallery_cams = fake_reid(4)
    with_junk = reid_metrics(query, query_ids, query_cams, gallery, gallery_ids, gallery_cams)
    kept = gallery_ids != -1
    without_junk = reid_metrics(query, query_ids, query_cams, gallery[kept], gallery_ids[kept], gallery_cams[kept])
    assert with_junk == without_junk
    # The same images labelled as an ordinary identity (0, distractors) do push matches down.
    relabelled = np.where(gallery_ids == -1, 0, gallery_ids)
    closer = gallery.copy()
    closer[gallery_ids == -1] = query[0]  # right on top of the first query
    assert reid_metrics(query, query_ids, query_cams, closer, gallery_ids, gallery_cams) == with_junk
    hurt = reid_metrics(query, query_ids, query_cams, closer, relabelled, gallery_cams)
    assert hurt["map"] < with_junk["map"]
    assert_same(hurt, reference(query, query_ids, query_cams, closer, relabelled, gallery_cams))


def test_queries_without_a_valid_match_are_skipped_and_counted():
    query = np.array([[1.0, 0], [0, 1.0], [1.0, 1.0], [0.5, 0.5]], np.float32)
    query_ids, query_cams = np.array([1, 2, 3, -1]), np.array([1, 1, 1, 2])
    gallery = np.array([[1.0, 0.1], [0.1, 1.0], [1.0, 0.9], [0.4, 0.6]], np.float32)
    # id 2 only under the query's own camera, id 3 absent, the -1 query has nothing to find.
    gallery_ids, gallery_cams = np.array([1, 2, 5, -1]), np.array([2, 1, 2, 3])
    results = reid_metrics(query, query_ids, query_cams, gallery, gallery_ids, gallery_cams)
    assert results["num_valid_queries"] == 1 and results["num_skipped_queries"] == 3
    assert results["num_queries"] == 4 and results["map"] == 1.0 and results["cmc@1"] == 1.0
    assert_same(results, reference(query, query_ids, query_cams, gallery, gallery_ids, gallery_cams))


def test_no_valid_query_gives_nan():
    results = reid_metrics(np.ones((1, 2)), [1], [1], np.ones((2, 2)), [2, 1], [1, 1])
    assert math.isnan(results["map"]) and math.isnan(results["cmc@1"]) and results["num_skipped_queries"] == 1


def test_ties_are_ranked_by_gallery_index():
    # Integer features, raw distances: exact ties. Wrong match first among equals -> miss at rank 1.
    query, query_ids, query_cams = np.array([[0.0, 0.0]]), np.array([1]), np.array([1])
    gallery = np.array([[1.0, 0], [0, 1.0], [-1.0, 0], [0, -1.0], [3.0, 0]], np.float32)
    gallery_ids, gallery_cams = np.array([9, 1, 1, 8, 1]), np.array([2, 2, 3, 2, 2])
    results = reid_metrics(query, query_ids, query_cams, gallery, gallery_ids, gallery_cams, feat_norm=False)
    assert results["cmc@1"] == 0 and results["map"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    assert_same(results, reference(query, query_ids, query_cams, gallery, gallery_ids, gallery_cams,
                                   feat_norm=False))
    # The same gallery reordered: the match now comes first among the tied images.
    order = [1, 0, 2, 3, 4]
    results = reid_metrics(query, query_ids, query_cams, gallery[order], gallery_ids[order],
                           gallery_cams[order], feat_norm=False)
    assert results["cmc@1"] == 1


def test_many_ties_with_integer_features_match_reference():
    rng = np.random.default_rng(5)
    query = rng.integers(-2, 3, (15, 3)).astype(np.float32)
    gallery = rng.integers(-2, 3, (40, 3)).astype(np.float32)
    data = (query, rng.integers(1, 5, 15), rng.integers(1, 3, 15),
            gallery, rng.integers(-1, 5, 40), rng.integers(1, 3, 40))
    assert_same(reid_metrics(*data, feat_norm=False, block_size=4), reference(*data, feat_norm=False))


def test_custom_distances():
    query, query_ids, query_cams, gallery, gallery_ids, gallery_cams = fake_reid(6)
    distances = np.random.default_rng(0).random((len(query), len(gallery)))
    results = reid_metrics(query, query_ids, query_cams, gallery, gallery_ids, gallery_cams, block_size=5,
                           distance_fn=lambda start, stop: distances[start:stop])
    assert_same(results, reference(query, query_ids, query_cams, gallery, gallery_ids, gallery_cams,
                                   distances=distances))


def test_max_rank_and_bad_input():
    data = fake_reid(7)
    results = reid_metrics(*data, max_rank=3)
    assert [key for key in results if key.startswith("cmc")] == ["cmc@1", "cmc@3"]
    query, query_ids, query_cams, gallery, gallery_ids, gallery_cams = data
    with pytest.raises(ValueError, match="query cameras"):
        reid_metrics(query, query_ids, query_cams[:-1], gallery, gallery_ids, gallery_cams)
    with pytest.raises(ValueError, match="integers"):
        reid_metrics(query, query_ids * 1.0, query_cams, gallery, gallery_ids, gallery_cams)
    with pytest.raises(ValueError, match="dimensions differ"):
        reid_metrics(query[:, :3], query_ids, query_cams, gallery, gallery_ids, gallery_cams)


def test_re_ranking_flag_with_and_without_cameras():
    # With cameras it re-ranks mAP/CMC; without, Recall@K and MAP@R (evaluation/postprocess.py).
    args = parse_args("eval", ["--re_ranking=True", "--query_list=q.txt", "--gallery_list=g.txt",
                               "--with_camera=True"])
    assert args.re_ranking and args.with_camera
    assert parse_args("eval", ["--re_ranking=True", "--query_list=q.txt", "--gallery_list=g.txt"]).re_ranking
    with pytest.raises(UserError, match="--re_ranking"):
        parse_args("eval", ["--re_ranking=True", "--query_expansion=3,3"])
