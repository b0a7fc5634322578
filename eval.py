"""Evaluate a trained network: Recall@K, MAP@R and NMI on the evaluation list.

    python eval.py --model=ResNet50 --pretrained_model=output/ResNet50/latest

Every evaluation image is a query against all the others (leave-one-out), or
--query_list against --gallery_list. See README.md for the metrics.
"""
import json

import numpy as np

import reader
from evaluation import metrics
from utility import print_arguments, run_cli
from utility.config import check_model_and_loss, resolve
from utility.errors import UserError


def main(argv=None):
    config = resolve("eval", argv)
    check_model_and_loss(config)
    print_arguments(config)
    separate = config.query_list is not None
    gallery_list = reader.read_image_list(config.gallery_list if separate else config.val_list, config.data_dir)
    query_list = reader.read_image_list(config.query_list, config.data_dir) if separate else None
    if gallery_list.num_classes < 2:
        raise UserError(f"{gallery_list.source} holds a single class: retrieval metrics need at least two")

    from engine.embedder import checkpoint_embedder

    embedder = checkpoint_embedder(config)
    embedded = _embed(embedder, gallery_list, config, "gallery")
    query = _embed(embedder, query_list, config, "query") if separate else None
    if embedded is None:
        return  # another process of paddle.distributed.launch: device 0 reports
    gallery, gallery_labels, gallery_paths = embedded

    results = metrics.evaluate(gallery, gallery_labels, ks=config.recall_k, feat_norm=config.feat_norm,
                               query=query[:2] if separate else None, with_nmi=config.nmi)
    results["test_loss"] = test_loss(config, gallery, gallery_labels)
    report(config, results)
    if config.visualize > 0:
        _visualize(config, gallery, gallery_labels, gallery_paths, query)


def _embed(embedder, image_list, config, name):
    """(features, labels, paths) of the readable images of `image_list`; None on devices other than 0."""
    import tempfile

    from engine.embedder import embed_shards, exchange_folder

    features, rows = embed_shards(embedder, image_list, config, exchange_folder(tempfile.gettempdir(), name),
                                  skip_bad=config.skip_bad_images)
    if features is None:
        return None
    return features, image_list.labels[rows], [image_list.paths[i] for i in rows]


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
    print(f"End test, test_loss {results['test_loss']:.5f}, test recall {results['recall@1']:.5f}", flush=True)
    for k in config.recall_k:
        print(f"Recall@{k}: {results[f'recall@{k}']:.4f}")
    print(f"MAP@R: {results['map@r']:.4f}, R-precision: {results['r_precision']:.4f} "
          f"({results['num_lone_queries']} of {results['num_queries']} queries have no other image of their class)")
    if "nmi" in results:
        print(f"NMI: {results['nmi']:.4f}")
    if config.metrics_out:
        record = {"checkpoint": config.pretrained_model, "model": config.model, **results}
        with open(config.metrics_out, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"Wrote the metrics to {config.metrics_out}")


def _visualize(config, gallery, gallery_labels, gallery_paths, query):
    from evaluation.visualize import draw_retrieval

    top_k = min(max(config.recall_k), len(gallery) - (query is None))
    if query is None:
        chosen = np.random.default_rng(config.seed).choice(len(gallery), min(config.visualize, len(gallery)), replace=False)
        q_feat, q_labels, q_paths = gallery[chosen], gallery_labels[chosen], [gallery_paths[i] for i in chosen]
        ranked, _ = metrics.nearest_neighbors(q_feat, gallery, top_k + 1, feat_norm=config.feat_norm)
        neighbors = np.array([[j for j in row if j != own][:top_k] for row, own in zip(ranked, chosen)])
    else:
        q_feat, q_labels, q_paths = (part[: config.visualize] for part in query)
        neighbors, _ = metrics.nearest_neighbors(q_feat, gallery, top_k, feat_norm=config.feat_norm)
    draw_retrieval(q_paths, q_labels, [[gallery_paths[j] for j in row] for row in neighbors],
                   gallery_labels[neighbors], config.visualize_file)
    print(f"Wrote {config.visualize_file}: {len(q_paths)} queries with their top {top_k}", flush=True)


if __name__ == "__main__":
    run_cli(main)
