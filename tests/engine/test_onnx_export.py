"""engine/onnx_export.py through infer.py: --export_onnx gives the Paddle model's features under onnxruntime, with
its preprocessing beside it; --quantize int8 gives a model whose features stay close to float32's."""
import json
import os

import numpy as np
import paddle
import pytest
from paddle_modes import static_mode

import infer
from cli.args import defaults, parse_args
from cli.config import resolve
from engine import programs
from engine.embedder import EXPORT_INFO, export
from engine.evaluate import evaluate_checkpoint
from utility.errors import UserError


@pytest.fixture(scope="module")
def onnx_exports(tiny_dataset, tmp_path_factory):
    """A fresh ResNet18 (32x32, 8-d) exported for Paddle, then by infer.py --export_onnx --quantize int8 (which
    also dumps the validation list's features by Paddle Inference)."""
    data_dir, train_list, val_list = tiny_dataset
    out = tmp_path_factory.mktemp("onnx")
    config = defaults("infer", model="ResNet18", image_shape=(3, 32, 32), embedding_size=8, use_gpu=False)
    with static_mode():
        paddle.seed(0)
        graph = programs.build_embed_graph(config)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(graph.startup)
        export(exe, graph.program, graph.image, graph.embedding, str(out / "paddle"), config)
    onnx_path = str(out / "model.onnx")
    infer.main([f"--inference_model={out / 'paddle'}", f"--export_onnx={onnx_path}", "--quantize=int8",
                f"--calibration_list={train_list}", "--calibration_images=24", f"--data_dir={data_dir}",
                f"--infer_list={val_list}", "--num_workers=0", f"--output_dir={out / 'paddle_dump'}"])
    return {"out": out, "paddle": str(out / "paddle"), "onnx": onnx_path, "int8": str(out / "model.int8.onnx"),
            "data_dir": data_dir, "val_list": val_list}


def embed(exports, model, name):
    """infer.py's dump of the validation list by `model` under onnxruntime: (features, fingerprint)."""
    out = exports["out"] / name
    infer.main([f"--inference_model={model}", "--engine=onnxruntime", f"--data_dir={exports['data_dir']}",
                f"--infer_list={exports['val_list']}", "--num_workers=0", f"--output_dir={out}"])
    return dump(out)


def dump(folder):
    with open(folder / "fingerprint.json") as f:
        return np.load(folder / "features.npy"), json.load(f)["fingerprint"]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_the_onnx_model_has_the_paddle_features_and_its_preprocessing_beside_it(onnx_exports):
    reference, paddle_fingerprint = dump(onnx_exports["out"] / "paddle_dump")
    features, fingerprint = embed(onnx_exports, onnx_exports["onnx"], "onnx_dump")
    assert features.shape == reference.shape == (24, 8)
    # The bound: max difference <= 1e-4 of the largest feature (measured ~1e-6 here).
    np.testing.assert_allclose(features, reference, rtol=0, atol=1e-4 * np.abs(reference).max())
    assert fingerprint == paddle_fingerprint  # the same embeddings: one gallery serves both engines
    description = read_json(onnx_exports["out"] / "model.preprocess.json")
    exported = read_json(os.path.join(onnx_exports["paddle"], EXPORT_INFO))
    assert {name: description[name] for name in exported} == exported
    assert description["precision"] == "float32" and description["input_name"] == programs.IMAGE


def test_the_int8_model_embeds_close_to_float32(onnx_exports):
    reference, fp32_fingerprint = dump(onnx_exports["out"] / "paddle_dump")
    features, fingerprint = embed(onnx_exports, onnx_exports["int8"], "int8_dump")
    cosine = (features * reference).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(reference, axis=1)
    # Cosine similarity to float32 on these 24 images, measured: calibrated on 24 training images as here, mean
    # 0.998 and lowest 0.989 (48 images: the same; calibrated on these very images: 0.999 / 0.995); badly
    # calibrated, on one image, 0.967 / 0.927, on noise 0.961 / 0.866. The bounds sit between the two.
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.98, cosine
    assert not np.allclose(features, reference, rtol=0, atol=1e-6 * np.abs(reference).max())  # really int8
    assert fingerprint != fp32_fingerprint
    assert read_json(onnx_exports["out"] / "model.int8.preprocess.json")["precision"] == "int8"


def test_eval_scores_an_onnx_export_as_its_paddle_export(onnx_exports):
    def figures(*argv):
        config = resolve("eval", [*argv, f"--data_dir={onnx_exports['data_dir']}",
                                  f"--val_list={onnx_exports['val_list']}", "--num_workers=0", "--nmi=False"])
        return evaluate_checkpoint(config)

    paddle_figures = figures(f"--inference_model={onnx_exports['paddle']}")
    onnx_figures = figures(f"--inference_model={onnx_exports['onnx']}", "--engine=onnxruntime")
    for name in ("recall@1", "recall@2", "map@r"):
        assert onnx_figures[name] == pytest.approx(paddle_figures[name], abs=1e-6)


def test_an_onnx_model_runs_only_under_onnxruntime_and_is_not_converted_again(onnx_exports, tmp_path):
    argv = [f"--inference_model={onnx_exports['onnx']}", f"--data_dir={onnx_exports['data_dir']}",
            f"--infer_list={onnx_exports['val_list']}", "--num_workers=0", f"--output_dir={tmp_path}"]
    with pytest.raises(UserError, match="--engine onnxruntime"):
        infer.main([*argv, "--engine=paddle"])
    infer.main(argv)  # without --engine, onnxruntime runs it
    assert (tmp_path / "features.npy").is_file()
    with pytest.raises(UserError, match="already ONNX"):
        infer.main([*argv, "--engine=onnxruntime", f"--export_onnx={tmp_path / 'again.onnx'}"])


@pytest.mark.parametrize("argv, message", [
    (["--export_onnx=model"], "ending in .onnx"),
    (["--quantize=int8"], "give --export_onnx"),
    (["--export_onnx=m.onnx", "--calibration_images=0"], "must be positive"),
])
def test_export_flags_are_checked_before_any_work(argv, message):
    with pytest.raises(UserError, match=message):
        parse_args("infer", argv)


def test_onnxruntimes_per_tensor_fallback_warnings_are_collected_and_others_still_printed(caplog):
    import logging

    from engine.onnx_export import PerTensorFallbacks

    with caplog.at_level(logging.WARNING), PerTensorFallbacks() as fallbacks:
        logging.warning("Axis 1 is out-of-range for weight 'in2a_branch2a_scale' with rank 1")
        logging.warning("Axis 1 is out-of-range for weight 'conv_w' with rank 3")  # not a 1-d weight: a fault
        logging.warning("something else")
    logging.warning("Axis 1 is out-of-range for weight 'after' with rank 1")  # closed: printed again
    assert fallbacks.names == ["in2a_branch2a_scale"]
    assert [record.getMessage() for record in caplog.records] == [
        "Axis 1 is out-of-range for weight 'conv_w' with rank 3", "something else",
        "Axis 1 is out-of-range for weight 'after' with rank 1"]
