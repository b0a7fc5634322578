"""engine/embedder.py: the Paddle Inference embedder gives the Executor's features; its device choice."""
import numpy as np
import paddle
import pytest
from paddle_modes import static_mode

from cli.args import defaults
from engine import programs
from engine.embedder import Embedder


def test_the_fast_path_gives_the_reference_features():
    config = defaults("eval", model="ResNet18", image_shape=(3, 32, 32), embedding_size=8, use_gpu=False)
    images = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype("float32")
    with static_mode():
        graph = programs.build_embed_graph(config)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(graph.startup)
        (reference,) = exe.run(graph.program, feed={programs.IMAGE: images}, fetch_list=[graph.embedding])
        fast = Embedder.from_program(exe, graph.program, graph.image, graph.embedding, config)(images)
    assert fast.shape == reference.shape == (5, 8)
    # Stated tolerance: 1e-4 of the largest feature (measured ~1e-6 with oneDNN here).
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-4 * np.abs(reference).max())


class FakeConfig:
    """Records what the embedder asks of paddle.inference.Config."""
    calls = []

    def __init__(self, *paths):
        self.calls.clear()

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args))


@pytest.mark.parametrize("use_gpu, selected, expected", [
    (None, "2", ("enable_use_gpu", (256, 2))),
    (True, None, ("enable_use_gpu", (256, 0))),
    (False, "2", ("disable_gpu", ())),
])
def test_exported_models_run_on_the_device_the_scripts_choose(tmp_path, monkeypatch, use_gpu, selected, expected):
    for name in ("inference.json", "inference.pdiparams"):
        (tmp_path / name).write_text("")
    (tmp_path / "preprocess.json").write_text('{"image_shape": [3, 32, 32]}')
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    if selected is None:
        monkeypatch.delenv("FLAGS_selected_gpus", raising=False)
    else:
        monkeypatch.setenv("FLAGS_selected_gpus", selected)
    monkeypatch.setattr(paddle.inference, "Config", FakeConfig)
    monkeypatch.setattr(paddle.inference, "create_predictor", lambda config: None)
    with pytest.raises(AttributeError):  # the fake predictor has no handles: stop right after creating it
        Embedder(str(tmp_path), use_gpu, engine="paddle")
    assert expected in FakeConfig.calls
