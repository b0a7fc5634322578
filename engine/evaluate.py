"""Evaluate a checkpoint: embed the evaluation list (or a query and a gallery list) and compute its metrics.

evaluate_checkpoint(config) -> {figure: value} is what eval.py prints and bench/omniglot.py reads
in process. Every evaluation image is a query against all the others (leave-one-out), or each
--query_list image against --gallery_list; with --with_camera True the latter follows the person
re-identification protocol (mAP and CMC, evaluation/reid.py) instead of the retrieval metrics.
The metrics themselves are evaluation/evaluator.py's; this module adds what needs the checkpoint
and the lists: the embeddings, `test_loss`, class names, the threshold and retrieval pictures.
"""
import os
import tempfile
from typing import NamedTuple, Optional

import numpy as np

import reader
from data.reid_lists import DISTRACTOR
from engine.embedder import config_embedder, embed_shards, exchange_folder, share_loader
from evaluation import fewshot
from evaluation.evaluator import REID_METRICS, Evaluation, Evaluator, Settings, verification_threshold
from evaluation.postprocess import Expansion
from evaluation.reid import JUNK_ID
from reader.image_list import check_unique_paths
from utility.errors import UserError

CONFUSED_PAIRS = 5  # the class pairs a retrieval evaluation names as most often confused at rank 1


class Embedded(NamedTuple):
    """The readable images of a list, embedded."""
    features: np.ndarray
    labels: np.ndarray
    paths: list
    cameras: Optional[np.ndarray]
    uncertainty: Optional[np.ndarray] = None  # sigma^2 of each image, when the model predicts it


def evaluate_checkpoint(config):
    """The figures of config.pretrained_model (or config.inference_model) on the configured lists (a resolved "eval"
    configuration).

    Returns None on the processes other than device 0 of paddle.distributed.launch.
    """
    lists = _read_lists(config)
    _check_episodes(config, lists[0])
    gallery, query = _embed_lists(config, *lists)
    if gallery is None:
        return None
    reid = query is not None and config.with_camera
    queries = gallery if query is None else query
    separate = {} if query is None else {"query": query.features, "query_labels": query.labels,
                                         "query_cameras": query.cameras}
    evaluation = Evaluation(gallery.features, gallery.labels, gallery_cameras=gallery.cameras,
                            settings=_settings(config, reid), gallery_groups=_alphabets(config, gallery.paths),
                            gallery_drawers=_drawers(config, gallery.paths),
                            gallery_offsets=_uncertainty_offsets(config, gallery), **separate)
    names = REID_METRICS if reid else ("recall_at_k", "map_at_r", "r_precision", *["nmi"] * config.nmi,
                                       "confused_pairs", *["few_shot"] * bool(config.episodes))
    results = Evaluator(names).evaluate(evaluation)
    if reid and results["num_valid_queries"] == 0:
        raise UserError(f"no query of {config.query_list} has an image of its identity under another camera in "
                        f"{config.gallery_list}: are both lists from one data set, with cameras?")
    if not reid:
        results["test_loss"] = test_loss(config, gallery.features, gallery.labels)
        results["confused_pairs"] = _named_pairs(results["confused_pairs"], queries, config.data_dir)
    if queries.uncertainty is not None:
        results.update(uncertain_fifths(evaluation, reid, queries.uncertainty),
                       uncertainty_weight=config.uncertainty_weight)
    if config.threshold:
        results.update(_threshold(evaluation, config.threshold_plot))
    if config.visualize > 0:
        _visualize(config, gallery, query)
    return results


def _settings(config, reid):
    # With re-identification lists, junk and distractor images take part in no verification pair:
    # the distractors share one label without being one person.
    return Settings(ks=tuple(config.recall_k), feat_norm=config.feat_norm, confused_pairs=CONFUSED_PAIRS,
                    re_ranking=config.re_ranking,
                    query_expansion=config.query_expansion and Expansion(*config.query_expansion),
                    database_augmentation=config.database_augmentation and Expansion(*config.database_augmentation),
                    few_shot=few_shot_task(config),
                    ignore_labels=(JUNK_ID, DISTRACTOR) if config.with_camera else ())


def _uncertainty_offsets(config, gallery):
    """--uncertainty_weight K: K sigma^2 of each gallery image, added to its squared distances (the query's own
    K sigma^2 is the same for all its candidates: it changes no ranking); None for K = 0."""
    if not config.uncertainty_weight:
        return None
    if gallery.uncertainty is None:
        raise UserError("--uncertainty_weight weighs the uncertainty a model predicts, and this one predicts none "
                        "(train with --uncertainty True)")
    return config.uncertainty_weight * gallery.uncertainty


def uncertain_fifths(evaluation, reid, query_uncertainty):
    """Recall@1 of the fifth of the queries with the largest predicted sigma^2 and of the fifth with the smallest
    (re-identification: CMC@1 over the queries with a match). A model whose uncertainty means something is
    wrong more often on the first."""
    if reid:
        average_precision, first_hit = evaluation.reid
        counted, hit = ~np.isnan(average_precision), first_hit == 1
    else:
        hit = evaluation.neighbors.hits[:, 0]
        counted = np.ones(len(hit), bool)
    hit = hit[counted][np.argsort(query_uncertainty[counted], kind="stable")]
    fifth = max(1, len(hit) // 5)
    return {"recall@1_least_uncertain_fifth": float(np.mean(hit[:fifth])),
            "recall@1_most_uncertain_fifth": float(np.mean(hit[-fifth:])), "uncertain_fifth_queries": fifth}


def few_shot_task(config):
    """The evaluation.fewshot.FewShotTask of --episodes, --ways, --shots, ... (None without --episodes)."""
    if not config.episodes:
        return None
    return fewshot.FewShotTask(config.episodes, config.ways, config.shots, config.queries_per_class or None,
                               config.within_alphabet, config.seed, config.paired_drawers)


def _alphabets(config, paths):
    """--within_alphabet: the folder --group_level levels above each image (relative to --data_dir)."""
    if not (config.episodes and config.within_alphabet):
        return None
    try:
        return fewshot.folder_groups([os.path.relpath(path, config.data_dir) for path in paths],
                                     config.group_level)
    except ValueError as err:
        raise UserError(f"--group_level {config.group_level}: {err}") from None


def _drawers(config, paths):
    """--paired_drawers: the drawer of each image, from its file name."""
    if not (config.episodes and config.paired_drawers):
        return None
    try:
        return fewshot.file_name_drawers(paths)
    except ValueError as err:
        raise UserError(f"--paired_drawers: {err}") from None


def _check_episodes(config, image_list):
    """Before any image is embedded: the evaluation list holds the classes (and alphabets) the episodes need."""
    if not config.episodes:
        return
    try:
        fewshot.check_episodes(image_list.labels, few_shot_task(config), _alphabets(config, image_list.paths),
                               _drawers(config, image_list.paths))
    except ValueError as err:
        raise UserError(f"--episodes on {image_list.source}: {err}") from None


def _read_lists(config):
    """(gallery, query or None): the evaluation list, or --gallery_list and --query_list; each image once."""
    def read(path):
        image_list = reader.read_image_list(path, config.data_dir, with_camera=config.with_camera)
        check_unique_paths(image_list)  # a duplicate would be its copy's perfect match
        return image_list

    separate = config.query_list is not None
    gallery_list = read(config.gallery_list if separate else config.val_list)
    if gallery_list.num_classes < 2:
        raise UserError(f"{gallery_list.source} holds a single class: retrieval metrics need at least two")
    return gallery_list, read(config.query_list) if separate else None


def _embed_lists(config, gallery_list, query_list):
    """(gallery, query or None) as Embedded; (None, None) on devices other than 0."""
    # The loaders' workers are forked before the embedder starts Paddle's threads.
    loaders = {name: share_loader(config, image_list, skip_bad=config.skip_bad_images)
               for name, image_list in (("gallery", gallery_list), ("query", query_list)) if image_list}
    try:
        embedder = config_embedder(config)
        return tuple(_embed(embedder, loaders[name], name) if name in loaders else None
                     for name in ("gallery", "query"))
    finally:
        for loader in loaders.values():
            loader.close()


def _embed(embedder, loader, name):
    embedded = embed_shards(embedder, loader, exchange_folder(tempfile.gettempdir(), name),
                            with_uncertainty=embedder.predicts_uncertainty)
    features, rows = embedded[:2]
    if features is None:
        return None
    image_list = loader.image_list
    cameras = image_list.cameras[rows] if image_list.cameras is not None else None
    uncertainty = embedded[2] if embedder.predicts_uncertainty else None
    return Embedded(features, image_list.labels[rows], [image_list.paths[i] for i in rows], cameras, uncertainty)


def test_loss(config, features, labels):
    """The metric loss of --loss_name averaged over evaluation batches laid out as in training.

    This is the original example's test_loss. Losses that classify into the training classes
    (softmax, arcmargin) mean nothing on held-out classes: nan.
    """
    import losses
    from reader.samplers import batches_of_one_pass

    spec = losses.get(config.loss_name)
    if spec.classifies:
        return float("nan")
    k = spec.samples_each_class(config.samples_each_class)
    loss_fn = spec.build_loss(features.shape[1], 0, spec.params_from(config))
    rng = np.random.default_rng(config.seed)  # for losses that sample pairs: the same value every run
    values = []
    for rows in batches_of_one_pass(labels, spec.layout, config.test_batch_size, k, config.seed):
        noise = rng.random((len(rows), len(rows)), dtype=np.float32) if spec.takes_noise else None
        values.append(_loss_value(loss_fn, features[rows], labels[rows], noise))
    return float(np.mean(values))


def _loss_value(loss_fn, features, labels, noise):
    import paddle

    with paddle.base.dygraph.guard():
        inputs = [paddle.to_tensor(features), paddle.to_tensor(labels)]
        if noise is not None:
            inputs.append(paddle.to_tensor(noise))
        return loss_fn(*inputs).item()


def _named_pairs(pairs, embedded, data_dir):
    """most_confused_pairs' entries with "names": each class's folder when all its images share one."""
    folders = {}
    for label, path in zip(embedded.labels.tolist(), embedded.paths):
        folder = os.path.relpath(os.path.dirname(path), data_dir)
        folders[label] = folder if folders.get(label, folder) == folder else None
    return [{**pair, "names": [folders.get(label) or str(label) for label in pair["classes"]]} for pair in pairs]


def _threshold(evaluation, plot_path):
    """The verification threshold's figures over all pairs of the evaluated images; --threshold_plot's picture."""
    from evaluation.threshold import draw_threshold_plot

    try:
        figures = verification_threshold(evaluation)
    except ValueError as err:
        raise UserError(f"--threshold: {err}") from None
    if plot_path:
        found = evaluation.verification
        draw_threshold_plot(found["pos_hist"], found["neg_hist"], found["threshold"], plot_path,
                            hist_max=found["hist_max"], accuracy=found["accuracy"])
        print(f"Wrote {plot_path}", flush=True)
    return figures


def _visualize(config, gallery, query):
    """--visualize N: N queries (chosen at random with --seed when leave-one-out) with their top results."""
    from evaluation.distances import nearest_neighbors
    from evaluation.visualize import draw_retrieval

    top_k = min(max(config.recall_k), len(gallery.features) - (query is None))
    if query is None:
        chosen = np.random.default_rng(config.seed).choice(len(gallery.features),
                                                           min(config.visualize, len(gallery.features)), replace=False)
        q_feat, q_labels, q_paths = gallery.features[chosen], gallery.labels[chosen], [gallery.paths[i] for i in chosen]
        ranked, _ = nearest_neighbors(q_feat, gallery.features, top_k + 1, feat_norm=config.feat_norm)
        neighbors = np.array([[j for j in row if j != own][:top_k] for row, own in zip(ranked, chosen)])
    else:
        q_feat, q_labels, q_paths = (part[: config.visualize] for part in query[:3])
        neighbors, _ = nearest_neighbors(q_feat, gallery.features, top_k, feat_norm=config.feat_norm)
    draw_retrieval(q_paths, q_labels, [[gallery.paths[j] for j in row] for row in neighbors],
                   gallery.labels[neighbors], config.visualize_file)
    print(f"Wrote {config.visualize_file}: {len(q_paths)} queries with their top {top_k}", flush=True)
