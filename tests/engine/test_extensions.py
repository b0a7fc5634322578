"""engine/extensions.py: the loop and the train program reach a feature only through the extension interface."""
import numpy as np
import paddle
import pytest
from train_runs import read_state, run_train, step_records

import losses
from cli.args import defaults
from engine import training
from engine.extensions import LOSS_NOISE, Extension, LossNoise, OtherDevicesRows, SkipNonFinite, Step
from engine.trainer import Position
from engine.xbm import MemoryExtension


class Recorder(Extension):
    """Multiplies the loss's embedding by a fed 1, fetches what the loss sees, records every hook, saves a count."""
    name = "recorder"

    def __init__(self, discard=()):
        self.discard = discard  # iterations whose step it discards
        self.events, self.fetched_shapes, self.restored = [], [], "never"
        self.steps = 0

    def add_to_graph(self, inputs):
        self.seen = inputs.embedding * paddle.static.data("recorder_scale", [1], "float32")
        inputs.embedding = self.seen

    def fetch_list(self):
        return [self.seen]

    def before_pass(self, pass_id, exe, graph):
        self.events.append(("pass", pass_id))

    def before_step(self, step):
        self.events.append(("step", step.position.iteration))
        return {"recorder_scale": np.ones(1, np.float32)}

    def after_step(self, step, fetched):
        self.fetched_shapes.append(fetched[0].shape)
        if step.position.iteration in self.discard:
            return False
        self.steps += 1
        return True

    def state(self):
        return {"steps": self.steps}

    def restore(self, state, source):
        self.restored = state
        self.steps = state["steps"]


@pytest.fixture
def added(monkeypatch):
    """Extensions appended to every run's list (engine.training.run_extensions)."""
    extra = []
    original = training.run_extensions
    monkeypatch.setattr(training, "run_extensions", lambda *args: original(*args) + extra)
    return extra


@pytest.mark.usefixtures("no_recall")
def test_an_extension_feeds_fetches_saves_and_resumes(tiny_dataset, tmp_path, capsys, added):
    recorder = Recorder()
    added.append(recorder)
    straight = str(tmp_path / "straight")
    run_train(tiny_dataset, straight, "--save_iter_step=1", "--test_iter_step=100", iters=2)
    assert recorder.events == [("pass", 0), ("step", 0), ("step", 1)]
    assert recorder.fetched_shapes == [(12, 512)] * 2
    assert recorder.restored == "never"
    assert read_state(f"{straight}/ResNet18/1")["recorder"] == {"steps": 1}

    resumed_recorder = Recorder()
    added[:] = [resumed_recorder]
    resumed = str(tmp_path / "resumed")
    run_train(tiny_dataset, resumed, "--test_iter_step=100", f"--checkpoint={straight}/ResNet18/1", iters=2)
    capsys.readouterr()
    assert resumed_recorder.restored == {"steps": 1}
    assert resumed_recorder.events == [("pass", 0), ("step", 1)]
    assert read_state(f"{resumed}/ResNet18/2")["recorder"] == {"steps": 2}
    assert [r["loss_metric"] for r in step_records(resumed)] == [step_records(straight)[1]["loss_metric"]]


@pytest.mark.usefixtures("no_recall")
def test_a_discarded_step_reaches_no_later_extension_and_is_not_shown(tiny_dataset, tmp_path, capsys, added):
    first, later = Recorder(discard={1}), Recorder()
    added.extend([first, later])
    run_train(tiny_dataset, str(tmp_path), "--test_iter_step=100", iters=3)
    capsys.readouterr()
    assert len(first.fetched_shapes) == 3 and first.steps == 2
    assert len(later.fetched_shapes) == 2 and later.steps == 2
    assert [r["iter"] for r in step_records(str(tmp_path))] == [0, 2]


def test_the_run_list_in_order():
    config = defaults("train", loss_name="marginloss", samples_each_class=3, nan_policy="skip_batch", xbm_size=8,
                      gather_embeddings=True)
    spec = losses.get(config.loss_name)
    found = training.run_extensions(config, spec, None, None, 2, 1)
    assert [type(e) for e in found] == [SkipNonFinite, OtherDevicesRows, MemoryExtension, LossNoise]
    assert [e.name for e in found] == [None, None, "xbm", None]
    alone = training.run_extensions(config, spec, None, None, 1, 0)
    assert [type(e) for e in alone] == [SkipNonFinite, MemoryExtension, LossNoise]  # no other devices
    plain = defaults("train")
    assert training.run_extensions(plain, losses.get(plain.loss_name), None, None, 1, 0) == []


def test_loss_noise_covers_every_reference_row_and_is_a_function_of_seed_iteration_and_device():
    sources = [OtherDevicesRows(world_size=3), MemoryExtension(size=8, start_iter=0, world_size=3, rank=1)]
    labels = np.arange(6)

    def noise(seed, iteration, rank):
        step = Step(graph=None, position=Position(iteration=iteration), labels=labels, log=None)
        return LossNoise(seed, rank, sources).before_step(step)[LOSS_NOISE]

    drawn = noise(0, 5, 1)
    assert drawn.shape == (6, 6 + 2 * 6 + 8) and drawn.dtype == np.float32
    assert ((drawn >= 0) & (drawn < 1)).all()
    np.testing.assert_array_equal(drawn, noise(0, 5, 1))
    for other in (noise(1, 5, 1), noise(0, 6, 1), noise(0, 5, 0)):
        assert not np.array_equal(drawn, other)
