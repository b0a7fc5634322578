"""engine/embedder.py's --engine choice: every engine gives the reference features; wrong choices are refused."""
import numpy as np
import paddle
import pytest
from paddle_modes import static_mode

from cli.args import defaults, parse_args
from engine import programs
from engine.embedder import Embedder, export
from utility.errors import UserError


@pytest.fixture(scope="module")
def tiny_program():
    """(exe, graph, config, images, reference features): a fresh ResNet18 at 32x32 and the Executor's features."""
    config = defaults("eval", model="ResNet18", image_shape=(3, 32, 32), embedding_size=8, use_gpu=False)
    images = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype("float32")
    with static_mode():
        graph = programs.build_embed_graph(config)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(graph.startup)
        (reference,) = exe.run(graph.program, feed={programs.IMAGE: images}, fetch_list=[graph.embedding])
    return exe, graph, config, images, reference


@pytest.mark.parametrize("engine", ["paddle", "onnxruntime"])
def test_each_engine_gives_the_reference_features(tiny_program, engine):
    exe, graph, config, images, reference = tiny_program
    with static_mode():
        embedder = Embedder.from_program(exe, graph.program, graph.image, graph.embedding, config, engine=engine)
    features = embedder(images)
    assert features.shape == reference.shape == (5, 8)
    # The bound: max difference <= 1e-4 of the largest feature (measured ~1e-6 with either engine).
    np.testing.assert_allclose(features, reference, rtol=0, atol=1e-4 * np.abs(reference).max())
    assert embedder(images[:2]).shape == (2, 8)  # any batch size


def test_the_engine_is_one_flag_of_eval_and_infer():
    assert defaults("eval").engine is defaults("infer").engine is None  # engine.embedder.default_engine
    assert parse_args("infer", ["--engine=onnxruntime"]).engine == "onnxruntime"
    with pytest.raises(UserError, match="invalid choice"):
        parse_args("eval", ["--engine=openvino"])


def test_the_default_engine_is_onnxruntime_on_the_cpu_and_for_onnx_files_paddle_on_a_gpu(tmp_path, monkeypatch):
    from engine.embedder import default_engine

    (tmp_path / "model.onnx").write_bytes(b"")
    assert default_engine(str(tmp_path), use_gpu=False) == "onnxruntime"
    assert default_engine(str(tmp_path / "model.onnx"), use_gpu=False) == "onnxruntime"
    from engine import device

    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(device, "cuda_wheel_installed", lambda: False)  # a CPU wheel: Paddle is not asked
    assert default_engine(str(tmp_path)) == "onnxruntime"
    monkeypatch.setattr(device, "cuda_wheel_installed", lambda: True)
    assert default_engine(str(tmp_path)) == default_engine(str(tmp_path), use_gpu=True) == "paddle"
    assert default_engine(str(tmp_path / "model.onnx"), use_gpu=True) == "onnxruntime"
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: False)  # the wheel's name, but no CUDA in it
    assert default_engine(str(tmp_path)) == "onnxruntime"


def test_the_cuda_wheel_is_found_by_its_package_name():
    from importlib import metadata

    from engine.device import cuda_wheel_installed

    names = {dist.metadata["Name"].lower() for dist in metadata.distributions()}
    assert cuda_wheel_installed() == ("paddlepaddle-gpu" in names)


def test_an_onnx_file_needs_onnxruntime_and_onnxruntime_the_cpu(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    with pytest.raises(UserError, match="--engine onnxruntime"):
        Embedder(str(model), use_gpu=False, engine="paddle")
    with pytest.raises(UserError, match="runs on the CPU"):
        Embedder(str(tmp_path), use_gpu=True, engine="onnxruntime")
    with pytest.raises(UserError, match="unknown engine"):
        Embedder(str(tmp_path), engine="tensorrt")


def test_the_retrieval_tools_take_the_engine_flag_too(tiny_program, tmp_path):
    from cli.retrieval_args import parse_index_args, parse_search_args
    from retrieval.query import QueryEmbedder
    from serve import parse_args as parse_serve_args

    assert parse_search_args("", ["--index_dir=x", "--engine=onnxruntime"]).engine == "onnxruntime"
    assert parse_serve_args(["--index_dir=x"]).engine is None
    args, _ = parse_index_args("", ["add", "--index_dir=x", "--gallery_dir=y", "--engine=onnxruntime"])
    assert args.engine == "onnxruntime"
    exe, graph, config, _, _ = tiny_program
    with static_mode():
        export(exe, graph.program, graph.image, graph.embedding, str(tmp_path / "model"), config)
    images = list(np.random.default_rng(1).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8))
    queries = QueryEmbedder(str(tmp_path / "model"), engine="onnxruntime")
    with static_mode():
        (reference,) = exe.run(graph.program, feed={programs.IMAGE: np.stack([queries.preprocess(i) for i in images])},
                               fetch_list=[graph.embedding])
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    np.testing.assert_allclose(queries.embed_images(images), reference, rtol=0, atol=1e-4)  # unit vectors
