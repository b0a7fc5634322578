"""Evaluate a trained network: Recall@K, MAP@R and NMI on the evaluation list; ReID mAP/CMC; a verification threshold.

    python eval.py --model=ResNet50 --pretrained_model=output/ResNet50/latest

Every evaluation image is a query against all the others (leave-one-out), or --query_list
against --gallery_list; with --with_camera True the latter follows the person re-identification
protocol (evaluation/reid.py). See README.md for the metrics.
"""
import json
import os
from typing import NamedTuple, Optional

import numpy as np

import reader
from cli.args import print_arguments
from cli.config import check_model_and_loss, resolve
from cli.runtime import run_cli
from evaluation import metrics
from reader.image_list import check_unique_paths
from utility.errors import UserError

CONFUSED_PAIRS = 5  # the class pairs eval.py names as most often confused at rank 1


class Embedded(NamedTuple):
    """The readable images of a list, embedded."""
    features: np.ndarray
    labels: np.ndarray
    paths: list
    cameras: Optional[np.ndarray]


def main(argv=None):
    config = resolve("eval", argv)
    check_model_and_loss(config)
    print_arguments(config)
    gallery_list, query_list = _read_lists(config)

    from engine.embedder import checkpoint_embedder, share_loader

    # The loaders' workers are forked before the embedder starts Paddle's threads.
    loaders = {name: share_loader(config, image_list, skip_bad=config.skip_bad_images)
               for name, image_list in (("gallery", gallery_list), ("query", query_list)) if image_list}
    try:
        embedder = checkpoint_embedder(config)
        gallery = _embed(embedder, loaders["gallery"], "gallery")
        query = _embed(embedder, loaders["query"], "query") if query_list else None
    finally:
        for loader in loaders.values():
            loader.close()
    if gallery is None:
        return  # another process of paddle.distributed.launch: device 0 reports

    if query is not None and config.with_camera:
        results = _reid_metrics(config, query, gallery)
    else:
        results = metrics.evaluate(gallery.features, gallery.labels, ks=config.recall_k, feat_norm=config.feat_norm,
                                   query=query[:2] if query is not None else None, with_nmi=config.nmi,
                                   confused_pairs=CONFUSED_PAIRS)
        results["test_loss"] = test_loss(config, gallery.features, gallery.labels)
        queries = gallery if query is None else query
        results["confused_pairs"] = _named_pairs(results["confused_pairs"], queries, config.data_dir)
    if config.threshold:
        results.update(_verification_threshold(config, gallery if query is None else _joined(query, gallery)))
    report(config, results)
    if config.visualize > 0:
        _visualize(config, gallery, query)


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


def _embed(embedder, loader, name):
    """The Embedded readable images of the loader's list; None on devices other than 0."""
    import tempfile

    from engine.embedder import embed_shards, exchange_folder

    features, rows = embed_shards(embedder, loader, exchange_folder(tempfile.gettempdir(), name))
    if features is None:
        return None
    image_list = loader.image_list
    cameras = image_list.cameras[rows] if image_list.cameras is not None else None
    return Embedded(features, image_list.labels[rows], [image_list.paths[i] for i in rows], cameras)


def _named_pairs(pairs, embedded, data_dir):
    """most_confused_pairs' entries with "names": each class's folder when all its images share one."""
    folders = {}
    for label, path in zip(embedded.labels.tolist(), embedded.paths):
        folder = os.path.relpath(os.path.dirname(path), data_dir)
        folders[label] = folder if folders.get(label, folder) == folder else None
    return [{**pair, "names": [folders.get(label) or str(label) for label in pair["classes"]]} for pair in pairs]


def _reid_metrics(config, query, gallery):
    from evaluation.reid import evaluate_reid

    results = evaluate_reid(query.features, query.labels, query.cameras, gallery.features, gallery.labels,
                            gallery.cameras, feat_norm=config.feat_norm, re_ranking=config.re_ranking)
    if results["num_valid_queries"] == 0:
        raise UserError(f"no query of {config.query_list} has an image of its identity under another camera in "
                        f"{config.gallery_list}: are both lists from one data set, with cameras?")
    return results


def _joined(query, gallery):
    return Embedded(np.concatenate([query.features, gallery.features]), np.concatenate([query.labels, gallery.labels]),
                    query.paths + gallery.paths, None)


def _verification_threshold(config, embedded):
    """Threshold figures over all pairs of the evaluated images.

    With re-identification lists, junk (-1) and distractor (0000) images take part in no pair:
    the distractors share one label without being one person.
    """
    from data.reid_lists import DISTRACTOR
    from evaluation import reid, threshold

    ignore = (reid.JUNK_ID, DISTRACTOR) if config.with_camera else ()
    try:
        found = threshold.verification_threshold(embedded.features, embedded.labels, feat_norm=config.feat_norm,
                                                 ignore_labels=ignore)
    except ValueError as err:
        raise UserError(f"--threshold: {err}") from None
    if config.threshold_plot:
        threshold.draw_threshold_plot(found["pos_hist"], found["neg_hist"], found["threshold"], config.threshold_plot,
                                      hist_max=found["hist_max"], accuracy=found["accuracy"])
        print(f"Wrote {config.threshold_plot}", flush=True)
    return {"threshold": found["threshold"], "threshold_accuracy": found["accuracy"],
            "tpr@fpr1e-3": found["tpr_at_fpr"], "num_positive_pairs": found["num_positive_pairs"],
            "num_negative_pairs": found["num_negative_pairs"]}


def test_loss(config, features, labels):
    """The metric loss of --loss_name averaged over evaluation batches laid out as in training.

    This is the original example's test_loss. Losses that classify into the training classes
    (softmax, arcmargin) mean nothing on held-out classes: nan.
    """
    import losses

    spec = losses.get(config.loss_name)
    if spec.classifies:
        return float("nan")
    from reader.samplers import batches_of_one_pass

    k = spec.samples_each_class(config.samples_each_class)
    loss_fn = spec.build(config, features.shape[1], 0)
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


def report(config, results):
    if "map" in results:
        print(f"Re-identification: mAP {results['map']:.4f}, CMC@1 {results['cmc@1']:.4f}, "
              f"CMC@5 {results['cmc@5']:.4f}, CMC@10 {results['cmc@10']:.4f} ({results['num_skipped_queries']} of "
              f"{results['num_queries']} queries have no match under another camera and are left out; "
              f"re-ranking {'on' if results['re_ranking'] else 'off'})", flush=True)
    else:
        print(f"End test, test_loss {results['test_loss']:.5f}, test recall {results['recall@1']:.5f}", flush=True)
        for k in config.recall_k:
            print(f"Recall@{k}: {results[f'recall@{k}']:.4f}")
        print(f"MAP@R: {results['map@r']:.4f}, R-precision: {results['r_precision']:.4f} "
              f"({results['num_lone_queries']} of {results['num_queries']} queries have no other image of their "
              "class)")
        if "nmi" in results:
            print(f"NMI: {results['nmi']:.4f}")
        _report_confusions(results["confused_pairs"])
    if "threshold" in results:
        print(f"Verification: threshold {results['threshold']:.4f}, accuracy {results['threshold_accuracy']:.4f} "
              f"over {results['num_positive_pairs']} same-class and {results['num_negative_pairs']} different-class "
              f"pairs; TPR {results['tpr@fpr1e-3']:.4f} at FPR 1e-3")
    if config.metrics_out:
        record = {"checkpoint": config.pretrained_model, "model": config.model, **results}
        with open(config.metrics_out, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"Wrote the metrics to {config.metrics_out}")


def _report_confusions(pairs):
    if not pairs:
        return
    print("Most confused classes (queries of the pair whose nearest neighbour is in the other class):")
    for pair in pairs:
        (a, b), (name_a, name_b) = pair["classes"], pair["names"]
        print(f"  {pair['errors']:>5} of {pair['queries']:<5} {a} {name_a}  <->  {b} {name_b}")


def _visualize(config, gallery, query):
    from evaluation.visualize import draw_retrieval

    top_k = min(max(config.recall_k), len(gallery.features) - (query is None))
    if query is None:
        chosen = np.random.default_rng(config.seed).choice(len(gallery.features),
                                                           min(config.visualize, len(gallery.features)), replace=False)
        q_feat, q_labels, q_paths = gallery.features[chosen], gallery.labels[chosen], [gallery.paths[i] for i in chosen]
        ranked, _ = metrics.nearest_neighbors(q_feat, gallery.features, top_k + 1, feat_norm=config.feat_norm)
        neighbors = np.array([[j for j in row if j != own][:top_k] for row, own in zip(ranked, chosen)])
    else:
        q_feat, q_labels, q_paths = (part[: config.visualize] for part in query[:3])
        neighbors, _ = metrics.nearest_neighbors(q_feat, gallery.features, top_k, feat_norm=config.feat_norm)
    draw_retrieval(q_paths, q_labels, [[gallery.paths[j] for j in row] for row in neighbors],
                   gallery.labels[neighbors], config.visualize_file)
    print(f"Wrote {config.visualize_file}: {len(q_paths)} queries with their top {top_k}", flush=True)


def run():
    """The console entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    run()
