"""eval.py's printed report of an evaluation's figures, and the --metrics_out record.

The first lines are the original example's (`End test, test_loss ..., test recall ...`, then
`Recall@K: ...`); tests and bench scripts parse them, so their wording stays.
"""
import json

from utility.files import append_line


def print_report(results, ks):
    """Print the figures of engine.evaluate.evaluate_checkpoint's results (ks: the K of Recall@K)."""
    if "map" in results:
        print(f"Re-identification: mAP {results['map']:.4f}, CMC@1 {results['cmc@1']:.4f}, "
              f"CMC@5 {results['cmc@5']:.4f}, CMC@10 {results['cmc@10']:.4f} ({results['num_skipped_queries']} of "
              f"{results['num_queries']} queries have no match under another camera and are left out; "
              f"re-ranking {'on' if results['re_ranking'] else 'off'})", flush=True)
        _print_uncertainty(results)
    else:
        print(f"End test, test_loss {results['test_loss']:.5f}, test recall {results['recall@1']:.5f}", flush=True)
        for k in ks:
            print(f"Recall@{k}: {results[f'recall@{k}']:.4f}")
        print(f"MAP@R: {results['map@r']:.4f}, R-precision: {results['r_precision']:.4f} "
              f"({results['num_lone_queries']} of {results['num_queries']} queries have no other image of their "
              "class)")
        if "post_processing" in results:
            print(f"(Recall@K, MAP@R and R-precision after {results['post_processing']})")
        _print_uncertainty(results)
        if "nmi" in results:
            print(f"NMI: {results['nmi']:.4f}")
        if "few_shot_error" in results:
            _print_few_shot(results)
        _print_confusions(results["confused_pairs"])
    if "threshold" in results:
        print(f"Verification: threshold {results['threshold']:.4f}, accuracy {results['threshold_accuracy']:.4f} "
              f"over {results['num_positive_pairs']} same-class and {results['num_negative_pairs']} different-class "
              f"pairs; TPR {results['tpr@fpr1e-3']:.4f} at FPR 1e-3", flush=True)


def append_record(path, checkpoint, model, results):
    """Append the figures as one JSON line (with the checkpoint and model) to `path`."""
    append_line(path, json.dumps({"checkpoint": checkpoint, "model": model, **results}))
    print(f"Wrote the metrics to {path}")


def _print_uncertainty(results):
    """The figures of a model that predicts its uncertainty (engine/evaluate.py, uncertain_fifths)."""
    if "recall@1_most_uncertain_fifth" not in results:
        return
    if results["uncertainty_weight"]:
        print(f"(ranked by squared distance + {results['uncertainty_weight']:g} x (sigma^2 of the query + sigma^2 "
              "of the gallery image))")
    print(f"Recall@1 of the most uncertain fifth of the queries: {results['recall@1_most_uncertain_fifth']:.4f}, "
          f"of the least uncertain fifth: {results['recall@1_least_uncertain_fifth']:.4f} "
          f"({results['uncertain_fifth_queries']} queries each, by the sigma^2 the model predicts)")


def _print_few_shot(results):
    print(f"Few-shot error: {results['few_shot_error']:.4f} +- {results['few_shot_ci95']:.4f} (95% interval; "
          f"{results['few_shot_task']})")
    left_out = [f"{results['few_shot_classes_left_out']} classes with too few images"] \
        if results["few_shot_classes_left_out"] else []
    if results["few_shot_groups_left_out"]:
        left_out.append(f"the alphabets with too few classes: {', '.join(results['few_shot_groups_left_out'])}")
    if left_out:
        print(f"  left out of the episodes: {'; '.join(left_out)}")


def _print_confusions(pairs):
    if not pairs:
        return
    print("Most confused classes (queries of the pair whose nearest neighbour is in the other class):")
    for pair in pairs:
        (a, b), (name_a, name_b) = pair["classes"], pair["names"]
        print(f"  {pair['errors']:>5} of {pair['queries']:<5} {a} {name_a}  <->  {b} {name_b}")
