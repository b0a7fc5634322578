"""Episodic few-shot classification: W-way K-shot error with a 95 % confidence interval.

The protocol of the few-shot literature and of Lake et al.'s Omniglot one-shot task, on embeddings
already computed (nothing is trained per episode):

- An episode draws W classes ("ways") from the evaluation list, then K support images ("shots")
  of each class and, of the remaining images of those classes, Q queries per class (all of them
  by default; Lake's protocol uses Q = 1).
- Within groups (Lake's 20-way *within-alphabet* task): the episode first draws one group
  (alphabet) uniformly among the groups with at least W usable classes, then its W classes from
  that group only. Groups with fewer usable classes are left out and named in the result; it is
  an error when no group qualifies.
- A class is usable when it has at least K + Q images (K + 1 when Q is "all"); the others are
  left out and counted.
- Paired drawers (Lake's runs, whose 20 candidates are "20 distinct characters produced by a typical
  drawer"): the episode also draws K + Q drawers, and every class's support images are the ones
  by the first K of them, its queries the ones by the other Q; only classes drawn by all K + Q take
  part. A query then never shares its drawer with a support image of another class. The drawer of
  an image is the number after the last underscore of its file name (Omniglot's 0596_01.png);
  a class with two images by one drawer uses the first in the list.
- Each query is assigned to the class of the nearest prototype: with K = 1 the support image
  itself, with K > 1 the mean of the class's support images. Distance: with feat_norm the
  embeddings are L2-normalised and the prototype means normalised again (cosine similarity, the
  ranking eval.py's retrieval uses); without, squared Euclidean distance to the plain mean.
  Exact ties go to the class drawn first.
- The episode's error is the share of its queries assigned to a wrong class. Reported: the mean
  over episodes and the 95 % confidence interval half-width 1.96 * std / sqrt(episodes) (std over
  the episodes' errors, numpy's default ddof = 0, as few-shot papers report it).

Reproducible: the episodes are a function of the seed, the labels and the groups (the draws of a
numpy Generator seeded once). Memory: one episode's support and query rows at a time; no N x N
matrix.

Groups from paths (folder_groups): the group of an image is the folder `level` levels above the
image file, as a path prefix: level 1 = the folder holding the image, 2 = its parent. Omniglot's
lists (data/omniglot.py) read set/alphabet/character/drawing.png, so level 2 is the alphabet.
"""
import re
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np

from evaluation.distances import as_matrix, l2_normalized

Z_95 = 1.96  # two-sided 95 % quantile of the normal distribution


@dataclass(frozen=True)
class FewShotTask:
    episodes: int
    ways: int                                 # W: classes per episode
    shots: int = 1                            # K: support images per class
    queries_per_class: Optional[int] = None   # Q: None = every image of the class not in the support
    within_groups: bool = False               # the W classes of an episode come from one group
    seed: int = 0                             # of the episodes' draws
    paired_drawers: bool = False              # supports by K drawers, queries by Q others, shared by the classes

    def __post_init__(self):
        if self.episodes < 1 or self.ways < 2 or self.shots < 1:
            raise ValueError(f"need episodes >= 1, ways >= 2 and shots >= 1, got {self.episodes}, {self.ways}, "
                             f"{self.shots}")
        if self.queries_per_class is not None and self.queries_per_class < 1:
            raise ValueError(f"queries per class must be 1 or more, got {self.queries_per_class}")
        if self.paired_drawers and self.queries_per_class is None:
            raise ValueError("paired drawers need a number of queries per class (Lake's runs: 1)")

    def describe(self):
        queries = "all other images" if self.queries_per_class is None else f"{self.queries_per_class}"
        where = ", within one group" if self.within_groups else ""
        where += ", support and queries by different drawers" if self.paired_drawers else ""
        return (f"{self.ways}-way {self.shots}-shot{where}, queries per class: {queries}, "
                f"{self.episodes} episodes, seed {self.seed}")


@dataclass(frozen=True)
class EpisodePlan:
    """What the episodes draw from: the usable classes, by group, and what was left out."""
    rows_of_class: dict       # usable class label -> int64 rows of the embedding matrix
    classes_by_group: list    # per usable group: the array of its usable class labels
    group_names: list         # the usable groups' names (None: episodes draw from all classes)
    classes_left_out: int     # classes with too few images (too few drawers, with paired drawers)
    groups_left_out: list     # groups with fewer than W usable classes
    rows_by_drawer: dict = None  # paired drawers: usable class label -> {drawer: its first row}


def plan_episodes(labels, task, groups=None, drawers=None):
    """The EpisodePlan of `task` on these labels (and per-row groups with task.within_groups, per-row
    drawers with task.paired_drawers).

    Raises ValueError when fewer than W classes are usable (in any one group with within_groups),
    or when a class's images lie in several groups.
    """
    labels = np.asarray(labels)
    needed = task.shots + (task.queries_per_class or 1)
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    rows = np.split(order, np.cumsum(sizes)[:-1])
    rows_of_class = {label: class_rows for label, class_rows, size in zip(classes.tolist(), rows, sizes)
                     if size >= needed}
    rows_by_drawer = _rows_by_drawer(rows_of_class, drawers, needed) if task.paired_drawers else None
    if rows_by_drawer is not None:
        rows_of_class = {label: rows_of_class[label] for label in rows_by_drawer}
    left_out = len(classes) - len(rows_of_class)
    what = f"{needed} drawers" if task.paired_drawers else f"{needed} images"
    if not task.within_groups:
        if len(rows_of_class) < task.ways:
            raise ValueError(f"{task.ways}-way episodes need {task.ways} classes with at least {what} "
                             f"each; the list has {len(rows_of_class)}")
        return EpisodePlan(rows_of_class, [np.array(sorted(rows_of_class))], None, left_out, [], rows_by_drawer)

    group_of_class = _group_of_each_class(labels, groups)
    members = {}
    for label in sorted(rows_of_class):
        members.setdefault(group_of_class[label], []).append(label)
    usable = {group: labels_ for group, labels_ in members.items() if len(labels_) >= task.ways}
    short = sorted(set(group_of_class.values()) - set(usable))
    if not usable:
        largest = max((len(labels_) for labels_ in members.values()), default=0)
        raise ValueError(f"{task.ways}-way within-group episodes need a group with {task.ways} classes of at "
                         f"least {what}; the largest has {largest}")
    names = sorted(usable)
    return EpisodePlan(rows_of_class, [np.array(usable[name]) for name in names], names, left_out, short,
                       rows_by_drawer)


def few_shot_error(features, labels, task, groups=None, feat_norm=True, drawers=None):
    """{few_shot_error, few_shot_ci95, ...}: the mean episode error of `task` and its 95 % interval.

    features: [N, D] embeddings; labels: [N] classes; groups: [N] group of each row (needed with
    task.within_groups, e.g. folder_groups(paths, 2)); drawers: [N] drawer of each row (needed with
    task.paired_drawers, e.g. file_name_drawers(paths)).
    """
    features = as_matrix(features, "features")
    for name, values in (("labels", labels), ("groups", groups), ("drawers", drawers)):
        if values is not None and len(values) != len(features):
            raise ValueError(f"{len(features)} embeddings, {len(values)} {name}")
    plan = plan_episodes(labels, task, groups, drawers)
    if feat_norm:
        features = l2_normalized(features)
    rng = np.random.default_rng(task.seed)
    errors = np.array([_episode_error(features, *draw_episode(plan, task, rng), feat_norm)
                       for _ in range(task.episodes)])
    return {"few_shot_error": float(errors.mean()),
            "few_shot_ci95": float(Z_95 * errors.std() / np.sqrt(task.episodes)),
            "few_shot_task": task.describe(),
            "few_shot_classes_left_out": plan.classes_left_out,
            "few_shot_groups_left_out": [str(group) for group in plan.groups_left_out]}


def check_episodes(labels, task, groups=None, drawers=None):
    """ValueError unless every episode of `task` can be drawn: the checks of plan_episodes, and with paired
    drawers the draws themselves (cheap: no embedding is needed to draw)."""
    plan = plan_episodes(labels, task, groups, drawers)
    if task.paired_drawers:
        rng = np.random.default_rng(task.seed)
        for _ in range(task.episodes):
            draw_episode(plan, task, rng)


def draw_episode(plan, task, rng):
    """(support, queries): int64 rows [W, K] and [W, Q] of one episode, classes in the order drawn.

    With Q = all, classes of different sizes give queries of different lengths: a list of arrays.
    """
    candidates = plan.classes_by_group[rng.integers(len(plan.classes_by_group))]
    if task.paired_drawers:
        return _paired_drawer_episode(plan, task, candidates, rng)
    chosen = rng.choice(candidates, task.ways, replace=False)
    support, queries = [], []
    for label in chosen.tolist():
        shuffled = rng.permutation(plan.rows_of_class[label])
        support.append(shuffled[:task.shots])
        stop = None if task.queries_per_class is None else task.shots + task.queries_per_class
        queries.append(shuffled[task.shots:stop])
    return np.array(support), queries


def _paired_drawer_episode(plan, task, candidates, rng, attempts=100):
    """draw_episode with paired drawers: K + Q drawers drawn among the candidates', then W classes by all."""
    needed = task.shots + task.queries_per_class
    known = np.array(sorted({drawer for label in candidates.tolist() for drawer in plan.rows_by_drawer[label]}))
    for _ in range(attempts):
        chosen_drawers = rng.choice(known, needed, replace=False).tolist()
        drawn_by_all = [label for label in candidates.tolist()
                        if all(drawer in plan.rows_by_drawer[label] for drawer in chosen_drawers)]
        if len(drawn_by_all) >= task.ways:
            break
    else:
        raise ValueError(f"{attempts} draws of {needed} drawers in a row found no {task.ways} classes of one group "
                         "drawn by all of them")
    chosen = rng.choice(np.array(drawn_by_all), task.ways, replace=False)
    rows = np.array([[plan.rows_by_drawer[label][drawer] for drawer in chosen_drawers] for label in chosen.tolist()])
    return rows[:, :task.shots], list(rows[:, task.shots:])


def _episode_error(features, support, queries, feat_norm):
    prototypes = features[support].astype(np.float64).mean(axis=1)  # [W, D]
    if feat_norm:
        prototypes /= np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
    query_rows = np.concatenate(queries)
    truth = np.repeat(np.arange(len(queries)), [len(rows) for rows in queries])
    points = features[query_rows].astype(np.float64)
    # Squared distance up to the query's own norm, which does not change its nearest prototype.
    distances = (prototypes ** 2).sum(axis=1)[None, :] - 2.0 * points @ prototypes.T
    return float(np.mean(np.argmin(distances, axis=1) != truth))


def folder_groups(paths, level):
    """The group of each image: its path up to the folder `level` levels above the file."""
    if level < 1:
        raise ValueError(f"the group level counts folders above the image: 1 or more, got {level}")
    groups = []
    for path in paths:
        parts = str(path).replace("\\", "/").split("/")
        if len(parts) <= level:
            raise ValueError(f"{path} has no folder {level} level(s) above the image")
        groups.append("/".join(parts[:-level]))
    return np.array(groups)


def file_name_drawers(paths):
    """The drawer of each image: the number after the last underscore of its file name (0596_01.png: 1)."""
    drawers = []
    for path in paths:
        found = re.search(r"_(\d+)\.[^./\\]+$", str(path))
        if found is None:
            raise ValueError(f"{path}: no drawer number after an underscore in its file name (as 0596_01.png)")
        drawers.append(int(found.group(1)))
    return np.array(drawers, dtype=np.int64)


def _rows_by_drawer(rows_of_class, drawers, needed):
    """{label: {drawer: first row}} of the classes drawn by at least `needed` drawers."""
    if drawers is None:
        raise ValueError("paired-drawer episodes need the drawer of every image")
    drawers = np.asarray(drawers).tolist()
    by_class = {}
    for label, class_rows in rows_of_class.items():
        firsts = {}
        for row in class_rows.tolist():
            firsts.setdefault(drawers[row], row)
        if len(firsts) >= needed:
            by_class[label] = firsts
    return by_class


def _group_of_each_class(labels, groups):
    if groups is None:
        raise ValueError("within-group episodes need the group of every image")
    pairs = set(zip(np.asarray(labels).tolist(), np.asarray(groups).tolist()))
    split = [label for label, count in Counter(label for label, _ in pairs).items() if count > 1]
    if split:
        raise ValueError(f"{len(split)} class(es) have images in several groups (e.g. class {split[0]}): "
                         "the group level does not name a folder above whole classes")
    return dict(pairs)
