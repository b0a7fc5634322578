"""Cross-batch memory (engine/xbm.py) and negatives gathered from every device (--gather_embeddings)."""
import json
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
from train_runs import REPO, final_parameters, read_log, read_state, run_train, skip_validation_embedding

import losses
from engine.trainer import Trainer
from engine.xbm import CrossBatchMemory
from utility.errors import UserError

# ---------------------------------------------------------------- the ring on the host

def batches(count, rows, dim, rng, devices=1):
    return [(rng.normal(size=(devices * rows, dim)).astype(np.float32), rng.integers(0, 50, size=devices * rows))
            for _ in range(count)]


@pytest.mark.parametrize("size,rows", [(8, 3), (6, 3), (4, 6), (5, 5)])
def test_memory_holds_the_last_rows_oldest_first(size, rows):
    rng = np.random.default_rng(size * 10 + rows)
    memory = CrossBatchMemory(size, 4)
    steps = batches(5, rows, 4, rng)
    for t, (features, labels) in enumerate(steps):
        memory.update(t, features, labels)
        all_features = np.concatenate([f for f, _ in steps[:t + 1]])
        all_labels = np.concatenate([y for _, y in steps[:t + 1]])
        got_features, got_labels = memory.contents()
        np.testing.assert_array_equal(got_features, all_features[-size:])
        np.testing.assert_array_equal(got_labels, all_labels[-size:])
    # What the program is fed: every slot, in slot order; never-written slots are labelled -1.
    fed = memory.feed(5)
    assert sorted(fed["xbm_labels"].tolist()) == sorted(memory.contents()[1].tolist())


def test_empty_slots_and_the_start_iteration():
    memory = CrossBatchMemory(10, 3, start_iter=2)
    rng = np.random.default_rng(1)
    (f0, y0), (f1, y1), (f2, y2) = batches(3, 4, 3, rng)
    assert (memory.feed(0)["xbm_labels"] == -1).all()
    memory.update(0, f0, y0)
    memory.update(1, f1, y1)
    assert memory.contents()[0].shape == (0, 3), "nothing is written before --xbm_start_iter"
    memory.update(2, f2, y2)
    assert (memory.feed(1)["xbm_labels"] == -1).all(), "before --xbm_start_iter every slot is fed as -1"
    fed = memory.feed(2)
    np.testing.assert_array_equal(fed["xbm_labels"], np.concatenate([y2, np.full(6, -1)]))
    np.testing.assert_array_equal(fed["xbm_features"][:4], f2)


def test_every_device_ring_and_the_fed_one():
    rng = np.random.default_rng(2)
    memory = CrossBatchMemory(6, 2, world_size=3, rank=1)
    steps = batches(3, 4, 2, rng, devices=3)
    for t, (features, labels) in enumerate(steps):
        memory.update(t, features, labels)
    for rank in range(3):
        want = np.concatenate([f[4 * rank:4 * rank + 4] for f, _ in steps])[-6:]
        np.testing.assert_array_equal(memory.contents(rank)[0], want)
    np.testing.assert_array_equal(np.sort(memory.feed(3)["xbm_labels"]),
                                  np.sort(np.concatenate([y[4:8] for _, y in steps])[-6:]))


def test_state_round_trips_exactly_through_json():
    rng = np.random.default_rng(3)
    memory = CrossBatchMemory(7, 5, world_size=2)
    for t, (features, labels) in enumerate(batches(3, 3, 5, rng, devices=2)):
        memory.update(t, features * 1e-30 if t == 1 else features, labels)  # tiny values survive too
    restored = CrossBatchMemory(7, 5, world_size=2)
    assert restored.restore(json.loads(json.dumps(memory.state())))
    for rank in range(2):
        for got, want in zip(restored.contents(rank), memory.contents(rank)):
            np.testing.assert_array_equal(got, want)
    assert (restored.write, restored.filled) == (memory.write, memory.filled)
    assert not restored.restore(None)
    with pytest.raises(UserError, match="memory of 7 rows x 5 dims on 2 device"):
        CrossBatchMemory(8, 5, world_size=2).restore(memory.state())


# ---------------------------------------------------------------- train.py

PK = ["--loss_name=quadrupletloss", "--samples_each_class=3", "--lr=0.05", "--test_iter_step=100"]


@pytest.fixture(scope="module")
def memory_run(tiny_dataset, tmp_path_factory):
    """A P x K run with a 20-row memory from iteration 1, saved after every step: (its save folder, the
    (iteration, images, labels) of every step it ran)."""
    out = str(tmp_path_factory.mktemp("xbm"))
    steps = []
    original = Trainer._step

    def step(self, position, images, labels, reader_s):
        steps.append((position.iteration, np.array(images), np.array(labels)))
        return original(self, position, images, labels, reader_s)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_step", step)
        skip_validation_embedding(patch)
        run_train(tiny_dataset, out, *PK, "--xbm_size=20", "--xbm_start_iter=1", "--save_iter_step=1", iters=3)
    return out, steps


def batch_embeddings(batches):
    """The training forward pass's embedding of each (checkpoint folder, images, labels): the batch's, with the
    parameters of the checkpoint (one program, each checkpoint restored into it in turn)."""
    import paddle

    from cli.config import resolve
    from engine import checkpoint, programs

    config = resolve("train", [*PK, "--model=ResNet18", "--image_shape=3,32,32", "--train_list=unused",
                               "--total_iter_num=1"])
    paddle.enable_static()
    embeddings = []
    try:
        graph = programs.build_train_graph(config, 8, 10)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(graph.startup)
        for checkpoint_dir, images, labels in batches:
            checkpoint.restore(graph.main, checkpoint_dir)
            embeddings += exe.run(graph.main, feed={"image": images, "label": labels}, fetch_list=[graph.embedding])
    finally:
        paddle.disable_static()
    return embeddings


def test_memory_after_training_is_the_last_batch_embeddings(memory_run):
    out, recorded_steps = memory_run
    state = read_state(os.path.join(out, "ResNet18", "3"))["xbm"]
    memory = CrossBatchMemory(20, state["dim"])
    memory.restore(state)
    features, labels = memory.contents()
    # Written after iterations 1 and 2 (12 rows each): the ring keeps the last 20 of those 24 rows.
    assert [t for t, _, _ in recorded_steps] == [0, 1, 2]
    want_labels = np.concatenate([y for _, _, y in recorded_steps[1:]])[-20:]
    np.testing.assert_array_equal(labels, want_labels)
    want = np.concatenate(batch_embeddings([(os.path.join(out, "ResNet18", str(t)), images, y)
                                            for t, images, y in recorded_steps[1:]]))[-20:]
    np.testing.assert_allclose(features, want, rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("no_recall")
def test_start_iteration_keeps_the_plain_loss_until_the_memory_has_rows(tiny_dataset, memory_run, tmp_path, capsys):
    plain = str(tmp_path / "plain")
    run_train(tiny_dataset, plain, *PK, iters=3)
    capsys.readouterr()
    without = [r["loss_metric"] for r in read_log(plain) if "loss_metric" in r]
    with_memory = [r["loss_metric"] for r in read_log(memory_run[0]) if "loss_metric" in r]
    # Iteration 0: before the start, all slots -1. Iteration 1: started, but nothing written yet.
    # (Equal up to float32 rounding: the distances against batch + memory are computed as a [B, B + N]
    # product, whose gradient rounds differently from the plain [B, B] one.)
    assert with_memory[0] == pytest.approx(without[0], rel=1e-6)
    assert with_memory[1] == pytest.approx(without[1], rel=2e-5)
    # Iteration 2: the rows of iteration 1 are candidates (and harder: the quadruplet loss can only grow).
    assert with_memory[2] > without[2] + 1e-4


@pytest.mark.usefixtures("no_recall")
def test_resume_with_memory_equals_uninterrupted_training(tiny_dataset, tmp_path, capsys):
    # The margin loss: besides the memory, the trainer feeds it noise, which must resume exactly too
    # (a resume without the memory: tests/scripts/test_train.py).
    loss = "marginloss"
    common = [f"--loss_name={loss}", "--samples_each_class=3", "--xbm_size=24", "--lr_steps=2", "--save_iter_step=2",
              "--test_iter_step=100", "--lr=0.05", "--alpha=0.5"]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    run_train(tiny_dataset, straight, *common, iters=3, loss=loss)
    run_train(tiny_dataset, resumed, *common, f"--checkpoint={straight}/ResNet18/2", iters=3, loss=loss)
    capsys.readouterr()
    first = [r for r in read_log(straight) if "loss_metric" in r]
    second = [r for r in read_log(resumed) if "loss_metric" in r]
    assert [r["iter"] for r in second] == [2]
    assert [b["loss_metric"] for b in second] == [a["loss_metric"] for a in first[2:]]
    want, got = final_parameters(f"{straight}/ResNet18/3"), final_parameters(f"{resumed}/ResNet18/3")
    for name in ("conv1_weights", "bn_conv1_mean", "res5b_branch2b_weights", "classifier_fc_weights"):
        np.testing.assert_array_equal(got[name], want[name])
    states = []
    for run in (straight, resumed):
        states.append(CrossBatchMemory(24, 512))
        states[-1].restore(read_state(f"{run}/ResNet18/3")["xbm"])
    np.testing.assert_array_equal(states[1].contents()[0], states[0].contents()[0])
    np.testing.assert_array_equal(states[1].contents()[1], states[0].contents()[1])
    # Without the memory in the checkpoint, the resumed run would differ: the memory does matter.
    assert (states[0].contents()[1] != -1).all()


@pytest.mark.parametrize("flag", ["--xbm_size=16", "--gather_embeddings=True"])
@pytest.mark.parametrize("loss", ["tripletloss", "npairsloss", "softmax", "arcmargin"])
def test_references_with_a_loss_that_takes_none_stop_at_start(tiny_dataset, tmp_path, flag, loss):
    with pytest.raises(UserError, match=f"{flag.split('=')[0]} needs a loss that compares each anchor"):
        run_train(tiny_dataset, str(tmp_path), flag, loss=loss)
    assert not os.path.exists(tmp_path / "log.jsonl")


@pytest.mark.parametrize("flag", ["--xbm_size=-1", "--xbm_start_iter=-3"])
def test_negative_memory_flags_are_refused(tiny_dataset, tmp_path, flag):
    with pytest.raises(UserError, match="must be 0 or more"):
        run_train(tiny_dataset, str(tmp_path), flag, "--loss_name=emlloss")


# ---------------------------------------------------------------- two devices (paddle.distributed.launch)

def launch(script_args, log_dir, timeout=300):
    result = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
                             str(log_dir), *script_args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    logs = [(log_dir / f"workerlog.{rank}").read_text() for rank in range(2)]
    assert result.returncode == 0, logs[0][-3000:] + logs[1][-3000:]
    return logs


def test_each_device_compares_its_anchors_with_the_global_batch(tmp_path):
    from loss_checks import np_batch_hard, np_eml, np_margin, np_ms, np_quadruplet, np_rll

    logs = launch([os.path.join(REPO, "tests", "engine", "gather_two_devices.py")], tmp_path / "logs")
    results = [json.loads(next(line for line in log.splitlines() if line.startswith("RESULT "))[7:]) for log in logs]
    embeddings = [np.array(r["embedding"]) for r in results]
    labels = [np.array(r["labels"]) for r in results]
    rll, ms, margin = (asdict(losses.get(name).params())
                       for name in ("rankedlistloss", "multisimilarityloss", "marginloss"))  # the defaults
    numpy_losses = {"batchhardtripletloss": lambda *a: np_batch_hard(*a, margin=0.3),
                    "quadrupletloss": lambda *a: np_quadruplet(*a, margin=0.3), "emlloss": np_eml,
                    "rankedlistloss": lambda *a: np_rll(*a, **rll), "multisimilarityloss": lambda *a: np_ms(*a, **ms)}
    for rank, result in enumerate(results):
        other = 1 - rank
        # The references are exactly the other device's rows, in rank order.
        np.testing.assert_array_equal(result["references"], result_rows(results[other]))
        assert result["reference_labels"] == results[other]["labels"]
        for name, numpy_loss in numpy_losses.items():
            want = numpy_loss(embeddings[rank], labels[rank], embeddings[other], labels[other])
            alone = numpy_loss(embeddings[rank], labels[rank], embeddings[other][:0], labels[other][:0])
            assert result["losses"][name] == pytest.approx(want, rel=1e-4, abs=1e-6), name
            if name == "batchhardtripletloss":
                assert abs(want - alone) > 1e-3, "the other device's rows must change this case"
        noise = np.array(result["noise"])
        want = np_margin(embeddings[rank], labels[rank], noise, np.full(10, margin["beta"]), embeddings[other],
                         labels[other], alpha=margin["alpha"], cutoff=margin["cutoff"])
        assert result["losses"]["marginloss"] == pytest.approx(want, rel=1e-4, abs=1e-6)

    # One data-parallel step of batchhardtripletloss: each device differentiates its own rows only
    # (the gathered rows are constants), and the gradients are averaged over the devices.
    before = np.array(results[0]["weights_before"], dtype=float)
    inputs = [np.array(r["inputs"], dtype=float) for r in results]
    fixed = [x @ before for x in inputs]

    def device_loss(weights, rank):
        return np_batch_hard(inputs[rank] @ weights, labels[rank], fixed[1 - rank], labels[1 - rank], margin=0.3)

    gradient = np.zeros_like(before)
    for index in np.ndindex(*before.shape):
        up, down = before.copy(), before.copy()
        up[index] += 1e-6
        down[index] -= 1e-6
        gradient[index] = np.mean([(device_loss(up, r) - device_loss(down, r)) / 2e-6 for r in range(2)])
    assert np.abs(gradient).max() > 1e-3
    for result in results:
        np.testing.assert_allclose(result["weights_after"], before - 0.5 * gradient, rtol=1e-4, atol=1e-5)


def result_rows(result):
    return np.array(result["embedding"], dtype=np.float32)
