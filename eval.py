"""Evaluate a trained network: Recall@K, MAP@R and NMI on the evaluation list; ReID mAP/CMC; a verification threshold.

    python eval.py --model=ResNet50 --pretrained_model=output/ResNet50/latest
    python eval.py --inference_model=model.int8.onnx --engine=onnxruntime    # an export of infer.py

Every evaluation image is a query against all the others (leave-one-out), or --query_list
against --gallery_list; with --with_camera True the latter follows the person re-identification
protocol (evaluation/reid.py). The work is engine/evaluate.py's, the metrics evaluation/'s; see
docs/evaluation.md.
"""
from cli.args import print_arguments
from cli.config import check_model_and_loss, resolve
from cli.runtime import run_cli
from engine.evaluate import evaluate_checkpoint
from evaluation.report import append_record, print_report


def main(argv=None):
    config = resolve("eval", argv)
    check_model_and_loss(config)
    print_arguments(config)
    results = evaluate_checkpoint(config)
    if results is None:
        return  # another process of paddle.distributed.launch: device 0 reports
    print_report(results, config.recall_k)
    if config.metrics_out:
        append_record(config.metrics_out, config.pretrained_model or config.inference_model, config.model, results)


def run():
    """The console entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    run()
