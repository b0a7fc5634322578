"""engine/embedder.py: the device Paddle Inference runs on (the engines' features: test_engines.py)."""
import paddle
import pytest

from engine.embedder import Embedder


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
