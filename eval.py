"""Evaluate a trained network: Recall@K, MAP@R and NMI on the evaluation list.

    python eval.py --model=ResNet50 --pretrained_model=output/ResNet50/latest

Every evaluation image is a query against all the others (leave-one-out), or
--query_list against --gallery_list. See README.md for the metrics.
"""
import json

import numpy as np

import data
import reader
from engine import checkpoint
from evaluation import metrics
from utility import parse_args, print_arguments, run_cli
from engine.embedder import CheckpointEmbedder, adopt_checkpoint_settings, embed_list
from utility.errors import UserError


def main(argv=None):
    args = parse_args("eval", argv)
    directory = checkpoint.resolve(args.pretrained_model)
    if directory is None:
        raise UserError("give the trained network with --pretrained_model=DIR (e.g. output/ResNet50/latest)")
    adopt_checkpoint_settings(args, directory)
    separate = args.query_list is not None
    if not separate:
        data.use_default_dataset_if_needed(args)
    print_arguments(args)

    gallery_list = reader.read_image_list(args.gallery_list if separate else args.val_list, args.data_dir)
    query_list = reader.read_image_list(args.query_list, args.data_dir) if separate else None
    if gallery_list.num_classes < 2:
        raise UserError(f"{gallery_list.source} holds a single class: retrieval metrics need at least two")
    embedder = CheckpointEmbedder(args, directory)
    gallery, gallery_labels, gallery_paths = _embed(embedder, gallery_list, args)
    query = _embed(embedder, query_list, args) if separate else None

    results = metrics.evaluate(gallery, gallery_labels, ks=args.recall_k, feat_norm=args.feat_norm,
                               query=query[:2] if separate else None, with_nmi=args.nmi)
    results["test_loss"] = test_loss(args, gallery, gallery_labels)
    report(args, results)
    if args.visualize > 0:
        _visualize(args, gallery, gallery_labels, gallery_paths, query)


def _embed(embedder, image_list, args):
    features, rows = embed_list(embedder, image_list, args, skip_bad=args.skip_bad_images)
    return features, image_list.labels[rows], [image_list.paths[i] for i in rows]


def test_loss(args, features, labels):
    """The metric loss of --loss_name averaged over evaluation batches laid out as in training.

    This is the original example's test_loss. Losses that classify into the training classes
    (softmax, arcmargin) mean nothing on held-out classes: nan.
    """
    import losses

    spec = losses.get(args.loss_name)
    if spec.classifies:
        return float("nan")
    layout, k = spec.layout, spec.samples_each_class(args.samples_each_class)
    loss_fn = spec.build(args, features.shape[1], 0)
    values = [_loss_value(loss_fn, features[rows], labels[rows])
              for rows in _loss_batches(labels, layout, k, args.test_batch_size, args.seed)]
    return float(np.mean(values))


def _loss_batches(labels, layout, k, batch_size, seed):
    """Row batches of the evaluation set in the layout the loss trains on (triplets or P x K)."""
    from reader.samplers import PKSampler, TripletSampler, class_members

    classes, class_ids = np.unique(labels, return_inverse=True)
    members = class_members(class_ids, len(classes))
    if layout == "triplet":
        sampler = TripletSampler(members, len(labels), max(3, batch_size // 3 * 3), seed)
    else:
        classes_per_batch = min(len(classes), max(2, batch_size // k))
        sampler = PKSampler(members, len(labels), classes_per_batch * k, k, seed)
    return [sampler.batch(0, b)[0] for b in range(sampler.batches_per_epoch)]


def _loss_value(loss_fn, features, labels):
    import paddle

    with paddle.base.dygraph.guard():
        return loss_fn(paddle.to_tensor(features), paddle.to_tensor(labels)).item()


def report(args, results):
    print(f"End test, test_loss {results['test_loss']:.5f}, test recall {results['recall@1']:.5f}", flush=True)
    for k in args.recall_k:
        print(f"Recall@{k}: {results[f'recall@{k}']:.4f}")
    print(f"MAP@R: {results['map@r']:.4f}, R-precision: {results['r_precision']:.4f} "
          f"({results['num_lone_queries']} of {results['num_queries']} queries have no other image of their class)")
    if "nmi" in results:
        print(f"NMI: {results['nmi']:.4f}")
    if args.metrics_out:
        record = {"checkpoint": args.pretrained_model, "model": args.model, **results}
        with open(args.metrics_out, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"Wrote the metrics to {args.metrics_out}")


def _visualize(args, gallery, gallery_labels, gallery_paths, query):
    from evaluation.visualize import draw_retrieval

    top_k = min(max(args.recall_k), len(gallery) - (query is None))
    if query is None:
        chosen = np.random.default_rng(args.seed).choice(len(gallery), min(args.visualize, len(gallery)), replace=False)
        q_feat, q_labels, q_paths = gallery[chosen], gallery_labels[chosen], [gallery_paths[i] for i in chosen]
        ranked, _ = metrics.nearest_neighbors(q_feat, gallery, top_k + 1, feat_norm=args.feat_norm)
        neighbors = np.array([[j for j in row if j != own][:top_k] for row, own in zip(ranked, chosen)])
    else:
        q_feat, q_labels, q_paths = (part[: args.visualize] for part in query)
        neighbors, _ = metrics.nearest_neighbors(q_feat, gallery, top_k, feat_norm=args.feat_norm)
    draw_retrieval(q_paths, q_labels, [[gallery_paths[j] for j in row] for row in neighbors],
                   gallery_labels[neighbors], args.visualize_file)
    print(f"Wrote {args.visualize_file}: {len(q_paths)} queries with their top {top_k}", flush=True)


if __name__ == "__main__":
    run_cli(main)
