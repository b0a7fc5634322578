"""evaluation/fewshot.py: episodes against a loop-by-loop reference, their draws, reproducibility, the errors."""
import math

import numpy as np
import pytest

from embedding_references import clustered
from evaluation.evaluator import Evaluator
from evaluation.fewshot import (FewShotTask, check_episodes, draw_episode, few_shot_error, file_name_drawers,
                                folder_groups, plan_episodes)


def reference_errors(features, labels, task, groups, feat_norm, drawers=None):
    """Each episode's error with Python loops: nearest support image (K = 1) or class mean (K > 1)."""
    rng = np.random.default_rng(task.seed)
    plan = plan_episodes(labels, task, groups, drawers)
    vectors = [np.asarray(row, np.float64) for row in features]
    if feat_norm:
        vectors = [v / np.linalg.norm(v) for v in vectors]
    errors = []
    for _ in range(task.episodes):
        support, queries = draw_episode(plan, task, rng)
        prototypes = []
        for rows in support:
            mean = sum(vectors[r] for r in rows) / len(rows)
            prototypes.append(mean / np.linalg.norm(mean) if feat_norm else mean)
        wrong = total = 0
        for truth, rows in enumerate(queries):
            for r in rows:
                if feat_norm:  # cosine similarity, the largest wins
                    scores = [-float(vectors[r] @ p) for p in prototypes]
                else:
                    scores = [float(((vectors[r] - p) ** 2).sum()) for p in prototypes]
                wrong += min(range(len(scores)), key=lambda c: (scores[c], c)) != truth
                total += 1
        errors.append(wrong / total)
    return np.array(errors)


def noisy(seed, num_classes=12, per_class=6, dim=8):
    features, labels = clustered(np.random.default_rng(seed), num_classes, per_class, dim, spread=1.2)
    return features, labels * 10 + 3  # labels need not be 0..C-1


@pytest.mark.parametrize("ways, shots, queries, feat_norm", [
    (5, 1, None, True), (5, 3, None, True), (4, 2, 1, False), (12, 1, 2, True)])
def test_matches_loop_reference(ways, shots, queries, feat_norm):
    features, labels = noisy(0)
    task = FewShotTask(episodes=30, ways=ways, shots=shots, queries_per_class=queries, seed=5)
    found = few_shot_error(features, labels, task, feat_norm=feat_norm)
    errors = reference_errors(features, labels, task, None, feat_norm)
    assert 0 < errors.mean() < 1  # the case is neither trivial nor hopeless
    assert found["few_shot_error"] == pytest.approx(errors.mean(), abs=1e-12)
    assert found["few_shot_ci95"] == pytest.approx(1.96 * errors.std() / math.sqrt(30), abs=1e-12)


def test_separable_classes_make_no_error():
    features = np.repeat(np.eye(6, dtype=np.float32), 4, axis=0)
    labels = np.repeat(np.arange(6), 4)
    found = few_shot_error(features, labels, FewShotTask(episodes=10, ways=6, shots=2))
    assert found["few_shot_error"] == 0 and found["few_shot_ci95"] == 0


def test_draws_follow_the_task():
    labels = np.repeat(np.arange(10), [5, 5, 5, 5, 5, 5, 6, 7, 3, 2])  # classes 8 and 9: too few for 2 + 2
    task = FewShotTask(episodes=1, ways=4, shots=2, queries_per_class=2)
    plan = plan_episodes(labels, task)
    assert plan.classes_left_out == 2
    rng = np.random.default_rng(1)
    for _ in range(50):
        support, queries = draw_episode(plan, task, rng)
        classes = labels[support[:, 0]]
        assert len(set(classes.tolist())) == 4 and not {8, 9} & set(classes.tolist())
        for label, shots, asked in zip(classes, support, queries):
            assert len(shots) == 2 and len(asked) == 2 and not set(shots) & set(asked)
            assert (labels[shots] == label).all() and (labels[asked] == label).all()


def test_all_remaining_images_are_queries():
    labels = np.repeat(np.arange(5), [3, 4, 5, 6, 7])
    task = FewShotTask(episodes=1, ways=5, shots=2)
    support, queries = draw_episode(plan_episodes(labels, task), task, np.random.default_rng(0))
    assert sorted(len(rows) for rows in queries) == [1, 2, 3, 4, 5]
    assert sorted(np.concatenate([support.ravel(), *queries]).tolist()) == list(range(len(labels)))


def test_within_group_episodes_stay_in_one_group():
    # Groups a (3 classes), b (5), c (6); 4-way episodes can only use b and c.
    labels = np.repeat(np.arange(14), 3)
    group_of_class = np.array(list("aaabbbbbcccccc"))
    groups = group_of_class[labels]
    task = FewShotTask(episodes=1, ways=4, shots=1, queries_per_class=1, within_groups=True)
    plan = plan_episodes(labels, task, groups)
    assert plan.group_names == ["b", "c"] and plan.groups_left_out == ["a"]
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(40):
        support, _ = draw_episode(plan, task, rng)
        episode_groups = set(groups[support[:, 0]].tolist())
        assert len(episode_groups) == 1
        seen |= episode_groups
    assert seen == {"b", "c"}
    features, _ = clustered(np.random.default_rng(3), 14, 3, 6, spread=1.0)
    task = FewShotTask(30, 4, 1, 1, within_groups=True, seed=4)
    found = few_shot_error(features, labels, task, groups=groups)
    expected = reference_errors(features, labels, task, groups, True)
    assert found["few_shot_error"] == pytest.approx(expected.mean(), abs=1e-12)
    assert found["few_shot_groups_left_out"] == ["a"]


def paired_drawer_set():
    """Two groups of 5 classes; drawers 1-4 drew every class, drawer 5 only classes 0-2, and drawer 1 drew
    class 3 twice (rows 20 and 21: the first counts); class 9 is two drawings by drawer 1: one drawer, too
    few for any episode."""
    labels, drawers = [], []
    for label in range(10):
        by = [1, 1] if label == 9 else [1, 2, 3, 4] + [5] * (label < 3) + [1] * (label == 3)
        labels += [label] * len(by)
        drawers += by
    labels, drawers = np.array(labels), np.array(drawers)
    groups = np.where(labels < 5, "a", "b")
    return labels, drawers, groups


@pytest.mark.parametrize("shots, queries", [(1, 1), (2, 1), (1, 2)])
def test_paired_drawers_give_supports_and_queries_by_drawers_shared_across_classes(shots, queries):
    labels, drawers, groups = paired_drawer_set()
    task = FewShotTask(1, ways=3, shots=shots, queries_per_class=queries, within_groups=True, paired_drawers=True)
    plan = plan_episodes(labels, task, groups, drawers)
    assert plan.classes_left_out == 1 and 9 not in plan.rows_of_class
    assert plan.rows_by_drawer[3][1] == np.flatnonzero((labels == 3) & (drawers == 1))[0]
    rng = np.random.default_rng(3)
    seen_drawers = set()
    for _ in range(60):
        support, asked = draw_episode(plan, task, rng)
        asked = np.array(asked)
        assert support.shape == (3, shots) and asked.shape == (3, queries)
        assert len(set(groups[support[:, 0]].tolist())) == 1
        classes = labels[support[:, 0]]
        assert len(set(classes.tolist())) == 3
        assert (labels[support] == classes[:, None]).all() and (labels[asked] == classes[:, None]).all()
        # every class by the same drawers, in the same roles; no drawer on both sides
        support_drawers, query_drawers = drawers[support], drawers[asked]
        assert (support_drawers == support_drawers[0]).all() and (query_drawers == query_drawers[0]).all()
        assert not set(support_drawers[0].tolist()) & set(query_drawers[0].tolist())
        episode_drawers = set(support_drawers[0].tolist()) | set(query_drawers[0].tolist())
        if 5 in episode_drawers:
            assert set(classes.tolist()) == {0, 1, 2}  # the only classes drawer 5 drew
        seen_drawers |= episode_drawers
    assert seen_drawers == {1, 2, 3, 4, 5}


def test_paired_drawer_errors_match_the_loop_reference():
    labels, drawers, groups = paired_drawer_set()
    features, _ = clustered(np.random.default_rng(6), 10, 1, 6, spread=1.0)
    features = features[labels] + np.random.default_rng(7).normal(0, 1.5, (len(labels), 6))
    task = FewShotTask(40, 3, 1, 1, within_groups=True, seed=2, paired_drawers=True)
    found = few_shot_error(features, labels, task, groups=groups, drawers=drawers)
    expected = reference_errors(features, labels, task, groups, True, drawers)
    assert 0 < expected.mean() < 1
    assert found["few_shot_error"] == pytest.approx(expected.mean(), abs=1e-12)
    assert found["few_shot_task"] == ("3-way 1-shot, within one group, support and queries by different drawers, "
                                      "queries per class: 1, 40 episodes, seed 2")
    unpaired = FewShotTask(40, 3, 1, 1, within_groups=True, seed=2)
    assert few_shot_error(features, labels, unpaired, groups=groups, drawers=drawers) == \
        few_shot_error(features, labels, unpaired, groups=groups)  # drawers change nothing unless paired


def test_drawers_no_ways_classes_share_are_found_before_any_embedding():
    # 4 classes, each by 2 drawers of its own: every class has enough drawers, no two share them.
    labels = np.repeat(np.arange(4), 2)
    drawers = np.arange(8)
    task = FewShotTask(5, ways=2, shots=1, queries_per_class=1, paired_drawers=True)
    plan_episodes(labels, task, drawers=drawers)  # the plan alone cannot tell
    with pytest.raises(ValueError, match="100 draws of 2 drawers in a row found no 2 classes"):
        check_episodes(labels, task, drawers=drawers)
    check_episodes(labels, task, drawers=np.tile([1, 2], 4))  # shared drawers: fine


def test_paired_drawers_need_a_number_of_queries():
    with pytest.raises(ValueError, match="paired drawers need a number of queries per class"):
        FewShotTask(1, ways=2, paired_drawers=True)


def test_drawers_from_file_names():
    paths = ["set/Sanskrit/character02/0709_17.png", "/d/x_y_03.JPEG"]
    assert file_name_drawers(paths).tolist() == [17, 3]
    with pytest.raises(ValueError, match="c1/4.png: no drawer number"):
        file_name_drawers(["c1/4.png"])
    with pytest.raises(ValueError, match="no drawer number"):
        file_name_drawers(["c_1/4.png"])  # the folder's underscore is not the file's


def test_reproducible_with_a_seed():
    features, labels = noisy(1)
    def error(seed):
        return few_shot_error(features, labels, FewShotTask(40, 5, 1, 1, seed=seed))

    first = error(7)
    assert error(7) == first
    others = {error(seed)["few_shot_error"] for seed in range(8, 12)}
    assert others != {first["few_shot_error"]}  # the seed does choose the episodes


def test_folder_groups():
    paths = ["/d/set/Tagalog/character01/1.png", "set/Sanskrit/character02/2.png"]
    assert folder_groups(paths, 2).tolist() == ["/d/set/Tagalog", "set/Sanskrit"]
    assert folder_groups(paths, 1).tolist() == ["/d/set/Tagalog/character01", "set/Sanskrit/character02"]
    with pytest.raises(ValueError, match="no folder 2 level"):
        folder_groups(["character01/1.png"], 2)
    with pytest.raises(ValueError, match="1 or more"):
        folder_groups(paths, 0)


@pytest.mark.parametrize("task, groups, message", [
    (FewShotTask(1, ways=5), None, "5-way episodes need 5 classes with at least 2 images each; the list has 4"),
    (FewShotTask(1, ways=3, within_groups=True), list("aabb"), "need a group with 3 classes"),
    (FewShotTask(1, ways=2, within_groups=True), None, "need the group of every image"),
    (FewShotTask(1, ways=2, queries_per_class=1, paired_drawers=True), None, "need the drawer of every image"),
])
def test_errors(task, groups, message):
    labels = np.array([0, 1, 2, 3])
    labels, groups = np.repeat(labels, 2), None if groups is None else np.repeat(groups, 2)
    with pytest.raises(ValueError, match=message):
        plan_episodes(labels, task, groups)


def test_a_class_split_over_groups_is_an_error():
    with pytest.raises(ValueError, match="images in several groups"):
        plan_episodes([0, 0, 1, 1], FewShotTask(1, 2, within_groups=True), ["a", "b", "b", "b"])


def test_bad_tasks():
    for args in ((0, 5), (1, 1), (1, 5, 0)):
        with pytest.raises(ValueError, match="need episodes"):
            FewShotTask(*args)
    with pytest.raises(ValueError, match="queries per class"):
        FewShotTask(1, 5, 1, 0)


def test_the_evaluator_metric():
    features, labels = noisy(2)
    groups = np.where(labels < 63, "first", "second")
    task = FewShotTask(20, 3, 2, 1, within_groups=True, seed=3)
    found = Evaluator(["few_shot"], few_shot=task)(features, labels, gallery_groups=groups)
    assert found["few_shot_error"] == few_shot_error(features, labels, task, groups)["few_shot_error"]
    assert found["few_shot_task"] == "3-way 2-shot, within one group, queries per class: 1, 20 episodes, seed 3"
    with pytest.raises(ValueError, match="needs the episodes' task"):
        Evaluator(["few_shot"])(features, labels)
