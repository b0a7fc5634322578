"""Checkpoint directories: atomic saving, the latest link, and loading by name and shape."""
import os

import numpy as np
import paddle
import pytest
from paddle.base import core

from cli.args import parse_args
from engine import checkpoint, programs
from utility.errors import UserError


@pytest.fixture
def embed_graph():
    """A ResNet18 image -> 16-d embedding program with initialised parameters."""
    paddle.enable_static()
    args = parse_args("infer", ["--model=ResNet18", "--embedding_size=16", "--image_shape=3,32,32"])
    graph = programs.build_embed_graph(args)
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(graph.startup)
    return graph


def scope_value(name):
    return np.array(paddle.static.global_scope().find_var(name).get_tensor())


def write_per_variable_file(directory, name, value):
    """What Paddle 1.x's save_persistables wrote: one file per variable, named by it."""
    tensor = core.DenseTensor()
    tensor.set(np.ascontiguousarray(value), paddle.CPUPlace())
    core.save_dense_tensor(tensor, os.path.join(directory, name))


def test_finetuning_from_a_paddle1_per_variable_directory(embed_graph, tmp_path, capsys):
    shapes = checkpoint.program_parameters(embed_graph.program)
    rng = np.random.default_rng(0)
    saved = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()
             if not name.startswith("embedding_fc")}
    for name, value in saved.items():
        write_per_variable_file(str(tmp_path), name, value)
    write_per_variable_file(str(tmp_path), "embedding_fc_weights", np.zeros((512, 1000), np.float32))
    write_per_variable_file(str(tmp_path), "fc_0.w_0", np.zeros((512, 1000), np.float32))  # an old classifier

    loaded = checkpoint.load_matching(embed_graph.program, str(tmp_path))
    assert loaded == len(saved) == len(shapes) - 2
    out = capsys.readouterr().out
    assert "Skipped 1 with another shape: embedding_fc_weights (512, 1000) -> (512, 16)" in out
    assert "Kept the initial value of 1 not in the file: embedding_fc_offset" in out
    for name in ("conv1_weights", "bn_conv1_mean", "res5b_branch2b_weights"):
        np.testing.assert_array_equal(scope_value(name), saved[name])


def test_a_directory_without_parameters_is_a_user_error(embed_graph, tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(UserError, match="holds no parameters"):
        checkpoint.load_matching(embed_graph.program, str(tmp_path))


def test_saving_is_atomic_and_latest_follows(embed_graph, tmp_path):
    model_dir = str(tmp_path / "ResNet18")
    os.makedirs(os.path.join(model_dir, ".tmp-7-12345"))  # what a killed save leaves behind
    for name in ("5", "10", "10"):
        checkpoint.save_checkpoint(embed_graph.program, model_dir, name, {"position": {"iteration": int(name)}})
    assert sorted(os.listdir(model_dir)) == [".tmp-7-12345", "10", "5", "latest"]
    assert checkpoint.resolve(model_dir) == os.path.realpath(os.path.join(model_dir, "10"))
    assert checkpoint.read_state(checkpoint.resolve(model_dir))["position"]["iteration"] == 10
    # an embedding program has no optimizer state, so no optimizer.safetensors
    assert sorted(os.listdir(os.path.join(model_dir, "10"))) == ["model.safetensors", "state.json"]
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.resolve(str(tmp_path / "nowhere"))


@pytest.mark.usefixtures("no_recall")
def test_a_checkpoint_in_the_layout_before_the_run_state_version_resumes_and_evaluates(tiny_dataset, trained,
                                                                                       tmp_path, capsys):
    import json

    import eval as eval_script
    from train_runs import copy_run, run_train

    copy_run(trained["save_dir"], tmp_path)
    saved = tmp_path / "ResNet18" / "2"
    state = json.loads((saved / "state.json").read_text())
    assert state["version"] == 2 and state["network"]["image_shape"] == [3, 32, 32]
    del state["version"], state["network"]  # as train.py wrote it before: the network's settings in args only
    (saved / "state.json").write_text(json.dumps(state))
    capsys.readouterr()
    run_train(tiny_dataset, tmp_path, "--embedding_size=16", f"--checkpoint={saved}", iters=3)
    assert f"Resumed from {saved} at iteration 2" in capsys.readouterr().out
    paddle.disable_static()
    data_dir, _, val_list = tiny_dataset
    eval_script.main([f"--data_dir={data_dir}", f"--val_list={val_list}", "--num_workers=0",
                      f"--pretrained_model={saved}", "--test_batch_size=12"])
    out = capsys.readouterr().out
    assert "--model=ResNet18 --embedding_size=16 --image_shape=3,32,32" in out and "recall" in out.lower()
