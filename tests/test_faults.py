"""Fault cases of checkpoint I/O and image decoding: each test fails without the handling it names.

Loading never runs code; damaged files are one UserError naming them; a save killed at any
instant leaves `latest` on a complete checkpoint; saving never writes through a planted link;
disk errors and NaN parameters never move `latest`; decoding stays within a pixel budget.
"""
import errno
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest
from PIL import Image

from engine import checkpoint
from reader.decode import BadImageError, load_rgb
from utility.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- a tiny train program: two parameters, their momentum velocities -------------------------

def build_program(out_features=3):
    """x [N, 4] -> Linear(4, out_features) -> mean, with Momentum: 2 parameters + 2 velocities."""
    paddle.enable_static()
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        x = paddle.static.data("x", [None, 4], "float32")
        layer = paddle.nn.Linear(4, out_features, weight_attr=paddle.ParamAttr(name="fc_weights"),
                                 bias_attr=paddle.ParamAttr(name="fc_offset"))
        loss = layer(x).mean()
        paddle.optimizer.Momentum(0.1, momentum=0.9).minimize(loss)
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(startup)
    exe.run(main, feed={"x": np.ones((2, 4), np.float32)}, fetch_list=[loss])  # velocities become non-zero
    return main


def scope_value(name):
    return np.array(paddle.static.global_scope().find_var(name).get_tensor())


def set_scope_value(name, value):
    paddle.static.global_scope().find_var(name).get_tensor().set(value, paddle.CPUPlace())


@pytest.fixture
def program():
    return build_program()


def saved(program, model_dir, name="1", iteration=1):
    return checkpoint.save_checkpoint(program, str(model_dir), name, {"position": {"iteration": iteration},
                                                                      "args": {"model": "Tiny"}})


# --- 1. loading cannot run code ---------------------------------------------------------------

class Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class EvalPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


def _infer_loader(program, directory):
    """What eval.py and infer.py load with: the embedder's program and checkpoint.load_all_parameters."""
    from cli.args import defaults
    from engine.embedder import checkpoint_embedder

    checkpoint_embedder(defaults("infer", model="ResNet18", embedding_size=16, image_shape=(3, 32, 32),
                                 pretrained_model=directory, use_gpu=False))


LOADERS = {"restore": checkpoint.restore, "load_all_parameters": checkpoint.load_all_parameters,
           "load_matching": checkpoint.load_matching, "eval/infer embedder": _infer_loader}


@pytest.mark.parametrize("payload", [Payload, EvalPayload])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_malicious_pdparams_never_runs_through_any_loader(program, tmp_path, loader, payload):
    marker = tmp_path / "pwned"
    directory = tmp_path / "ckpt"
    directory.mkdir()
    tensors = {"fc_weights": np.zeros((4, 3), np.float32), "fc_offset": np.zeros(3, np.float32),
               "conv1_weights": payload(marker)}
    (directory / "model.pdparams").write_bytes(pickle.dumps(tensors, protocol=4))
    with pytest.raises(UserError, match=r"refusing to load .*model\.pdparams: it asks to run (posix\.system|builtins\.eval)"):
        LOADERS[loader](program, str(directory))
    assert not marker.exists()


def test_a_malicious_pdopt_never_runs_on_resume(program, tmp_path):
    marker = tmp_path / "pwned"
    directory = tmp_path / "ckpt"
    directory.mkdir()
    params = {"fc_weights": np.zeros((4, 3), np.float32), "fc_offset": np.zeros(3, np.float32)}
    (directory / "model.pdparams").write_bytes(pickle.dumps(params, protocol=2))
    (directory / "model.pdopt").write_bytes(pickle.dumps({"fc_weights_velocity_0": Payload(marker)}))
    with pytest.raises(UserError, match=r"model\.pdopt"):
        checkpoint.restore(program, str(directory))
    assert not marker.exists()


def test_paddle_pickle_files_still_load(program, tmp_path):
    """Old checkpoints (paddle.static.save) and paddle.save files (arrays, protocol 2; eager Tensors) load exactly."""
    want = {name: scope_value(name) for name in ("fc_weights", "fc_offset", "fc_weights_velocity_0")}
    old = tmp_path / "old"
    paddle.static.save(program, str(old / "model"))
    foreign, tensors = tmp_path / "foreign", tmp_path / "tensors"
    foreign.mkdir()
    tensors.mkdir()
    paddle.save({k: want[k] for k in ("fc_weights", "fc_offset")}, str(foreign / "net.pdparams"), protocol=2)
    paddle.disable_static()
    paddle.save({k: paddle.to_tensor(want[k]) for k in ("fc_weights", "fc_offset")}, str(tensors / "t.pdparams"))
    paddle.enable_static()
    for name in want:
        set_scope_value(name, np.full_like(want[name], 7.0))
    checkpoint.restore(program, str(old))
    for name in want:
        np.testing.assert_array_equal(scope_value(name), want[name])
    for directory in (foreign, tensors):
        set_scope_value("fc_weights", np.zeros((4, 3), np.float32))
        checkpoint.load_all_parameters(program, str(directory))
        np.testing.assert_array_equal(scope_value("fc_weights"), want["fc_weights"])


def test_safetensors_checkpoint_round_trips_parameters_and_optimizer_state(program, tmp_path):
    path = saved(program, tmp_path)
    assert sorted(os.listdir(path)) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    want = {name: scope_value(name) for name in ("fc_weights", "fc_offset", "fc_weights_velocity_0",
                                                 "fc_offset_velocity_0")}
    assert np.abs(want["fc_weights_velocity_0"]).sum() > 0
    for name in want:
        set_scope_value(name, np.zeros_like(want[name]))
    checkpoint.restore(program, path)
    for name in want:
        np.testing.assert_array_equal(scope_value(name), want[name])


# --- damaged files: one UserError naming the file ---------------------------------------------

def _paddle1_file(path, value):
    from paddle.base import core

    tensor = core.DenseTensor()
    tensor.set(value, paddle.CPUPlace())
    core.save_dense_tensor(tensor, str(path))


def _damage(kind, program, directory):
    """Write a damaged parameter file of `kind` into directory; return its path."""
    rng = np.random.default_rng(0)
    if kind.startswith("safetensors"):
        path = saved(program, directory.parent / "m", "1") + "/model.safetensors"
        directory.rmdir()
        os.rename(os.path.dirname(path), directory)
        path = directory / "model.safetensors"
    elif kind.startswith("pdparams"):
        path = directory / "model.pdparams"
        paddle.static.save(program, str(directory / "model"))
    else:
        path = directory / "fc_weights"
        _paddle1_file(path, rng.standard_normal((4, 3)).astype(np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if kind.endswith("truncated") else rng.bytes(len(data)))
    return str(path)


@pytest.mark.parametrize("kind", ["safetensors truncated", "safetensors random", "pdparams truncated",
                                  "pdparams random", "paddle1 truncated", "paddle1 random"])
def test_a_damaged_parameter_file_is_one_user_error_naming_it(program, tmp_path, kind):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    path = _damage(kind, program, directory)
    for load in (checkpoint.load_all_parameters, checkpoint.load_matching):
        with pytest.raises(UserError, match="damaged") as info:
            load(program, str(directory))
        assert path in str(info.value)


def test_a_truncated_state_json_is_one_user_error_naming_it(program, tmp_path):
    path = saved(program, tmp_path)
    state_file = os.path.join(path, "state.json")
    with open(state_file, "r+") as f:
        f.truncate(10)
    with pytest.raises(UserError, match="damaged") as info:
        checkpoint.read_state(path)
    assert state_file in str(info.value)


# --- 2. the checkpoint directory ---------------------------------------------------------------

def _latest_is_complete(model_dir):
    latest = os.path.join(model_dir, "latest")
    return os.path.isfile(os.path.join(latest, "state.json")) and os.path.isfile(os.path.join(latest, "model.safetensors"))


class Killed(BaseException):
    """The process dies here: nothing after it runs, no clean-up either."""


FS_CALLS = ("rename", "replace", "symlink", "mkdir", "remove", "unlink", "rmdir", "fsync")


def _fail_at(monkeypatch, count, mode, model_dir, checks):
    """Make the count-th file-system call fail; check `latest` after every call that ran.

    mode "kill": that call and every later one raise Killed (a SIGKILL: no clean-up runs);
    mode "error": that call raises an OSError and the save cleans up after itself.
    """
    done = [0]

    def wrap(real):
        def call(*args, **kwargs):
            done[0] += 1
            if done[0] - 1 == count or (mode == "kill" and done[0] - 1 > count):
                if mode == "kill":
                    raise Killed
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            result = real(*args, **kwargs)
            checks.append(_latest_is_complete(model_dir))
            return result
        return call

    for name in FS_CALLS:
        monkeypatch.setattr(os, name, wrap(getattr(os, name)))
    return done


@pytest.mark.parametrize("mode", ["kill", "error"])
def test_latest_names_a_complete_checkpoint_whatever_instant_a_save_fails(program, tmp_path, monkeypatch, mode):
    count = 0
    while True:
        model_dir = str(tmp_path / f"run{count}")
        saved(program, model_dir, "10", iteration=10)       # latest -> 10, to be replaced by a new 10
        saved(program, model_dir, "5", iteration=5)
        saved(program, model_dir, "10", iteration=11)       # latest -> 10 again
        checks = []
        with monkeypatch.context() as patch:
            calls = _fail_at(patch, count, mode, model_dir, checks)
            try:
                saved(program, model_dir, "10", iteration=12)
                finished = True
            except (Killed, UserError):
                finished = False
        assert all(checks), f"latest dangled after file-system call {checks.index(False) + 1} (failing call {count})"
        assert _latest_is_complete(model_dir), f"failing call {count}"
        if mode == "error":   # the failed save cleaned up after itself
            assert sorted(os.listdir(model_dir)) == ["10", "5", "latest"], f"failing call {count}"
        checkpoint.remove_stale_temporaries(model_dir)
        assert _latest_is_complete(model_dir)
        assert sorted(os.listdir(model_dir)) == ["10", "5", "latest"]
        iteration = checkpoint.read_state(checkpoint.resolve(model_dir))["position"]["iteration"]
        assert iteration in (11, 12) and (iteration == 12 or not finished)
        if calls[0] <= count:   # the save made fewer calls: every one of them has failed once
            assert finished
            break
        count += 1
    assert count > 15   # every call of a full save was a failure point (21 calls here)


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path, program):
    model_dir = tmp_path / "m"
    saved(program, model_dir, "3")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    for entry in (f".tmp-4-{dead}", f".old-3-{dead}", f"3.old-{dead}"):
        (model_dir / entry).mkdir()
    (model_dir / f".tmp-latest-{dead}").symlink_to("3")
    live = model_dir / f".tmp-9-{os.getppid()}"   # another live process's save in progress is left alone
    live.mkdir()
    removed = checkpoint.remove_stale_temporaries(str(model_dir))
    assert sorted(removed) == sorted([f".tmp-4-{dead}", f".old-3-{dead}", f"3.old-{dead}", f".tmp-latest-{dead}"])
    assert sorted(os.listdir(model_dir)) == [live.name, "3", "latest"]


def test_a_planted_symlink_is_replaced_never_written_through(program, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "7").symlink_to(outside)                                 # in place of a checkpoint
    (model_dir / f".tmp-7-{os.getpid()}").symlink_to(outside)            # in place of the temporary
    (model_dir / "latest").symlink_to(outside)
    path = saved(program, model_dir, "7")
    assert sorted(os.listdir(outside)) == ["precious.txt"] and (outside / "precious.txt").read_text() == "keep me"
    assert not os.path.islink(path) and os.path.isfile(os.path.join(path, "model.safetensors"))
    assert os.readlink(model_dir / "latest") == "7"
    assert sorted(os.listdir(model_dir)) == ["7", "latest"]


@pytest.mark.parametrize("fault", ["save dir under a regular file", "disk full", "read-only file system"])
def test_disk_errors_are_one_user_error_and_leave_no_temporary(program, tmp_path, monkeypatch, fault):
    model_dir = tmp_path / "m"
    saved(program, model_dir, "1")
    target = model_dir
    if fault == "save dir under a regular file":
        (tmp_path / "file").write_text("")
        target = tmp_path / "file" / "m"
    elif fault == "disk full":
        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", full)
    else:
        def read_only(path, *args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(UserError, match=r"cannot save checkpoint .*(Not a directory|No space|Read-only)") as info:
        saved(program, target, "2")
    assert str(target) in str(info.value)
    monkeypatch.undo()
    assert sorted(os.listdir(model_dir)) == ["1", "latest"] and os.readlink(model_dir / "latest") == "1"


def test_non_finite_parameters_are_never_saved(program, tmp_path):
    model_dir = tmp_path / "m"
    saved(program, model_dir, "1")
    weights = scope_value("fc_weights")
    weights[0, 0] = np.nan
    set_scope_value("fc_weights", weights)
    with pytest.raises(checkpoint.NonFiniteError, match="fc_weights hold NaN or infinite"):
        saved(program, model_dir, "2")
    assert sorted(os.listdir(model_dir)) == ["1", "latest"] and os.readlink(model_dir / "latest") == "1"


def test_finetuning_from_another_model_says_so(program, tmp_path):
    path = saved(program, tmp_path / "m")                       # its state.json says model Tiny
    lines = []
    checkpoint.load_matching(program, path, log=lines.append, model="Tiny2")
    assert "The checkpoint was trained as Tiny; this network is Tiny2: loaded 2 of 2" in lines
    lines.clear()
    checkpoint.load_matching(program, path, log=lines.append, model="Tiny")
    assert lines == [f"Loaded 2 of 2 parameters from {path}"]


# --- the run state: state.json is checked when read ----------------------------------------------

def _state_json(folder, damage):
    """A checkpoint folder whose state.json (the layout before RunState's version) has one damage."""
    state = {"position": {"iteration": 2, "pass_id": 0, "batch": 2}, "scheduler": {"last_epoch": 2, "last_lr": 0.01},
             "classes": list(range(1, 9)), "args": {"model": "ResNet18", "image_shape": [3, 32, 32]}}
    damage(state)
    folder.mkdir()
    (folder / "state.json").write_text(json.dumps(state))
    return str(folder)


STATE_DAMAGES = {  # issue 27, item 5
    "position.iteration '2'": lambda s: s["position"].update(iteration="2"),
    "position.iteration -5": lambda s: s["position"].update(iteration=-5),
    "position has an unknown entry 'epoch'": lambda s: s["position"].update(epoch=1),
    "classes is missing": lambda s: s.pop("classes"),
    "scheduler 'x'": lambda s: s.update(scheduler="x"),
    "args [": lambda s: s.update(args=["--model", "ResNet18"]),
    "args.image_shape [3, -5, 32]": lambda s: s["args"].update(image_shape=[3, -5, 32]),
    "args.image_shape [4, 32, 32]": lambda s: s["args"].update(image_shape=[4, 32, 32]),
    "args.image_shape 'abc'": lambda s: s["args"].update(image_shape="abc"),
}


@pytest.mark.parametrize("field", list(STATE_DAMAGES))
def test_a_damaged_state_json_stops_resuming_with_one_line_naming_file_and_field(tiny_dataset, tmp_path, field):
    import train

    data_dir, train_list, val_list = tiny_dataset
    folder = _state_json(tmp_path / "ckpt", STATE_DAMAGES[field])
    with pytest.raises(UserError) as info:
        train.main([f"--data_dir={data_dir}", f"--train_list={train_list}", f"--val_list={val_list}",
                    "--model=ResNet18", "--image_shape=3,32,32", f"--checkpoint={folder}", "--num_workers=0",
                    "--cpu_processes=1", f"--model_save_dir={tmp_path / 'out'}"])
    assert str(info.value).startswith(f"{folder}/state.json: {field}") and "\n" not in str(info.value)


@pytest.mark.parametrize("field", list(STATE_DAMAGES))
def test_eval_refuses_a_damaged_state_json_before_adopting_its_settings(tmp_path, field):
    from cli.config import resolve

    folder = _state_json(tmp_path / "ckpt", STATE_DAMAGES[field])
    with pytest.raises(UserError) as info:
        resolve("eval", [f"--pretrained_model={folder}", "--val_list=v.txt"])
    assert str(info.value).startswith(f"{folder}/state.json: {field}") and "\n" not in str(info.value)


@pytest.mark.parametrize("damage", [lambda r: r.pop("labels_int64"), lambda r: r.update(features_float32="%%"),
                                    lambda r: r.update(features_float32=r["features_float32"][:8]),
                                    lambda r: r.update(write=-1), lambda r: r.update(size="many")])
def test_a_damaged_cross_batch_memory_is_one_user_error(damage):
    from engine.xbm import CrossBatchMemory

    memory = CrossBatchMemory(4, 2)
    memory.update(0, np.ones((3, 2), np.float32), np.arange(3))
    record = memory.state()
    damage(record)
    with pytest.raises(UserError, match=r"^ckpt/7: the cross-batch memory saved in its state.json \(xbm\) is damaged"):
        CrossBatchMemory(4, 2).restore(record, "ckpt/7")
    assert CrossBatchMemory(4, 2).restore(memory.state(), "ckpt/7")  # the undamaged record restores


# --- 3. bounded decoding -----------------------------------------------------------------------

def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (4000, 3000)).save(path)       # a few kB on disk, 12 Mpixels decoded
    assert path.stat().st_size < 10_000
    with pytest.raises(BadImageError, match=r"4000x3000 is 12000000 pixels, more than the limit of 1000000"):
        load_rgb(str(path), max_pixels=1_000_000)
    assert load_rgb(str(path), max_pixels=None).shape == (3000, 4000, 3)


def test_a_jpeg_over_the_pixel_limit_is_decoded_at_reduced_size(tmp_path):
    rng = np.random.default_rng(0)
    pixels = np.kron(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), np.ones((10, 10, 1), np.uint8))
    path = str(tmp_path / "big.jpg")
    Image.fromarray(pixels).save(path, quality=95)
    half = load_rgb(path, max_pixels=200 * 150)
    assert half.shape == (150, 200, 3)
    reference = np.asarray(Image.fromarray(pixels).resize((200, 150), Image.BOX), dtype=int)
    assert np.abs(half.astype(int) - reference).mean() < 6
    assert load_rgb(path, max_pixels=100 * 75).shape == (75, 100, 3)
    with pytest.raises(BadImageError, match="even at 1/8 size"):
        load_rgb(path, max_pixels=1000)


def test_compositing_a_large_rgba_png_needs_no_full_size_float_copies(tmp_path):
    """Peak memory of a child decoding a 4000x3000 RGBA PNG: about the image (48 MB) plus the output (36 MB).

    The float compositing this replaces grew the peak by about 550 MB; this grows it by about 100 MB.
    """
    import cv2

    height, width = 3000, 4000
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[:, :, :3] = 90
    rgba[:, :, 3] = np.arange(width, dtype=np.uint32) % 256
    path = str(tmp_path / "big.png")
    cv2.imwrite(path, rgba, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    code = textwrap.dedent(f"""
        import json
        import resource
        from reader.decode import load_rgb
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        image = load_rgb({path!r}, max_pixels=None)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps([image.shape, image[0, 0].tolist(), image[0, 255].tolist(), (after - before) // 1024]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    shape, first, last, grown = json.loads(out.strip().splitlines()[-1])
    assert shape == [height, width, 3]
    assert first == [255, 255, 255] and last == [90, 90, 90]  # alpha 0 -> white, alpha 255 -> the colour
    raw_mb = height * width * 4 // 2**20
    assert grown < 3 * raw_mb, f"decoding grew the peak by {grown} MB for a {raw_mb} MB image"


# --- every output file: a planted link is replaced, never written through (issue 27 item 7) ------

@pytest.fixture
def planted(tmp_path):
    """plant(folder, name): a symbolic link `folder/name` to a victim file outside; check() that it is intact."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")

    def plant(folder, name):
        os.makedirs(folder, exist_ok=True)
        os.symlink(victim, os.path.join(folder, name))
        return os.path.join(folder, name)

    plant.intact = lambda: victim.read_text() == "keep me"
    return plant


def _written_not_through(path, planted):
    assert planted.intact() and not os.path.islink(path) and os.path.getsize(path) > 0


def test_the_training_curves_replace_a_planted_link(tmp_path, planted):
    from evaluation.plot import plot_training

    log = tmp_path / "log.jsonl"
    log.write_text('{"iter": 1, "loss_metric": 0.5, "lr": 0.1}\n{"iter": 2, "test_recall": 0.3}\n')
    target = planted(tmp_path / "out", "curves.png")
    plot_training(str(log), target)
    _written_not_through(target, planted)


@pytest.mark.parametrize("name", ["features.npy", "labels.npy", "paths.txt", "fingerprint.json"])
def test_infer_dumps_replace_a_planted_link(tmp_path, planted, name):
    from engine.dump import write_dump

    target = planted(tmp_path / "out", name)
    write_dump(str(tmp_path / "out"), np.ones((2, 3)), np.array([1, 2]), ["a.png", "b.png"], "f00d")
    _written_not_through(target, planted)


def test_the_metrics_record_refuses_a_planted_link(tmp_path, planted):
    from evaluation.report import append_record

    target = planted(tmp_path, "metrics.jsonl")
    with pytest.raises(UserError, match="symbolic link"):
        append_record(target, "ckpt", "ResNet18", {"recall@1": 0.5})
    assert planted.intact()


def test_the_threshold_and_retrieval_pictures_replace_a_planted_link(tmp_path, planted):
    from evaluation.threshold import draw_threshold_plot
    from evaluation.visualize import draw_retrieval

    target = planted(tmp_path, "threshold.png")
    draw_threshold_plot(np.array([0, 3, 1, 0]), np.array([0, 0, 2, 4]), 0.9, target, hist_max=2.0)
    _written_not_through(target, planted)
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    target = planted(tmp_path, "retrieval.png")
    draw_retrieval([str(image)], [1], [[str(image)]], [[1]], target, thumb=16)
    _written_not_through(target, planted)


def test_search_results_replace_a_planted_link(tmp_path, planted):
    from types import SimpleNamespace

    from retrieval.searching import write_results

    target = planted(tmp_path, "results.jsonl")
    match = SimpleNamespace(rank=1, id=3, similarity=0.9, path="c1/0.png", label=1, metadata={}, sigma2=None)
    write_results(target, ["q.png"], [None], [[match]], [None])
    _written_not_through(target, planted)
    assert json.loads(open(target).read())["matches"][0]["id"] == 3


def test_an_export_replaces_planted_links_at_its_folder_and_its_files(trained, tmp_path, planted):
    import infer

    flags = [f"--pretrained_model={trained['checkpoint']}", f"--data_dir={trained['data_dir']}",
             f"--infer_list={trained['val_list']}", "--num_workers=0", f"--output_dir={tmp_path / 'dump'}"]
    existing = tmp_path / "existing"
    for name in ("preprocess.json", "inference.json", "inference.pdiparams"):
        planted(existing, name)
    infer.main(flags + [f"--export_model={existing}"])
    for name in ("preprocess.json", "inference.json", "inference.pdiparams"):
        _written_not_through(existing / name, planted)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "linked").symlink_to(outside)
    infer.main(flags + [f"--export_model={tmp_path / 'linked'}"])
    assert os.listdir(outside) == [] and not os.path.islink(tmp_path / "linked")
    assert (tmp_path / "linked" / "preprocess.json").is_file()
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


# --- a checkpoint is good only if it embeds to finite values (issue 27 item 3) -----------------

def _copy_with_embedding_weights(checkpoint_dir, out_dir, value):
    """A copy of a checkpoint whose 2-D (fully connected) weights are all `value`."""
    import shutil

    import safetensors.numpy

    shutil.copytree(checkpoint_dir, out_dir)
    params = safetensors.numpy.load_file(os.path.join(out_dir, "model.safetensors"))
    params = {name: np.full_like(a, value) if a.ndim == 2 else a for name, a in params.items()}
    with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
        f.write(safetensors.numpy.save(params))
    return str(out_dir)


def _eval_flags(trained, model):
    return [f"--pretrained_model={model}", f"--data_dir={trained['data_dir']}", f"--val_list={trained['val_list']}",
            "--num_workers=0"]


def test_a_checkpoint_with_nan_parameters_is_refused_on_load(trained, tmp_path):
    import eval as eval_script

    model = _copy_with_embedding_weights(trained["checkpoint"], tmp_path / "nan", np.nan)
    with pytest.raises(UserError, match=r"refusing .*nan: .* hold NaN or infinite values"):
        eval_script.main(_eval_flags(trained, model))


def test_eval_and_infer_refuse_embeddings_that_overflow(trained, tmp_path):
    import eval as eval_script
    import infer

    model = _copy_with_embedding_weights(trained["checkpoint"], tmp_path / "huge", 3e38)  # finite, overflows
    with pytest.raises(UserError, match=r"checkpoint .*huge embeds 24 of 24 images .* NaN or infinite"):
        eval_script.main(_eval_flags(trained, model))
    out = tmp_path / "dump"
    with pytest.raises(UserError, match=r"checkpoint .*huge embeds .* NaN or infinite"):
        infer.main(_eval_flags(trained, model) + [f"--infer_list={trained['val_list']}", f"--output_dir={out}"])
    assert not out.exists() or not os.listdir(out)


def test_an_exported_model_that_embeds_inf_writes_nothing():
    """index.py and infer.py --inference_model embed through embed_list: the export's folder is named."""
    from engine.embedder import embed_list

    class Loader:
        image_list = type("List", (), {"source": "gallery.txt"})
        num_rows = 3

        def batches(self):
            yield np.zeros((3, 3, 4, 4), np.float32), [0, 1, 2]

    embedder = lambda images: np.array([[1.0, 0.0], [np.inf, 0.0], [0.0, 1.0]])
    embedder.name = "exported/"
    with pytest.raises(UserError, match=r"^exported/ embeds 1 of 3 images of gallery.txt as NaN or infinite"):
        embed_list(embedder, Loader(), show_progress=False)


@pytest.mark.usefixtures("no_recall")
def test_a_network_that_embeds_to_inf_is_never_saved(tiny_dataset, tmp_path, monkeypatch):
    """Finite parameters that overflow every embedding: the probe batch stops the run before `latest` moves."""
    from engine.trainer import Trainer
    from train_runs import run_train

    original = Trainer._milestones

    def overflow_then(self, position):
        if position.iteration == 2:
            for name, shape in checkpoint.program_parameters(self.graph.main).items():
                if len(shape) == 2:
                    set_scope_value(name, np.full(shape, 3e38, np.float32))
        original(self, position)

    monkeypatch.setattr(Trainer, "_milestones", overflow_then)
    with pytest.raises(UserError, match=r"embeds a fixed probe batch to NaN .* checkpoint 2 was not saved; "
                                        r"the last good checkpoint is .*1"):
        run_train(tiny_dataset, tmp_path, "--embedding_size=16", "--save_iter_step=1", "--test_iter_step=1", iters=2)
    assert os.readlink(tmp_path / "ResNet18" / "latest") == "1"


# --- error lines that advise what helps (issue 27 item 11) ---------------------------------------

def test_npairs_with_too_few_classes_names_the_batch_size_not_samples_each_class(tiny_dataset, tmp_path):
    from train_runs import run_train

    with pytest.raises(UserError) as info:  # 8 training classes; npairs takes 2 images of each
        run_train(tiny_dataset, tmp_path, "--samples_each_class=3", loss="npairsloss", batch=24)
    message = str(info.value)
    assert "a batch of 24 = 12 classes x 2 images needs 12 classes, the list has 8" in message
    assert "lower --train_batch_size to at most 16" in message and "raise --samples_each_class" not in message


def test_a_pretrained_file_holding_no_arrays_reads_sensibly(program, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    with open(folder / "model.pdparams", "wb") as f:
        pickle.dump({"note": "no arrays here"}, f)
    with pytest.raises(UserError, match=r"weights holds no parameter arrays: is it a model's parameter file\?$"):
        checkpoint.load_matching(program, str(folder))


# --- a damaged log.jsonl or a failing plot never stops training (issue 27 item 2) ---------------

@pytest.mark.curves
@pytest.mark.usefixtures("no_recall")
def test_a_damaged_log_never_stops_a_resumed_run_or_its_saves(tiny_dataset, trained, tmp_path, capsys):
    from train_runs import copy_run, run_train

    copy_run(trained["save_dir"], tmp_path)
    (tmp_path / "curves.png").unlink()
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"pass": 0, "iter": 9, "lr"')  # a record cut by a kill, without its newline
    latest = tmp_path / "ResNet18" / "latest"
    run_train(tiny_dataset, tmp_path, f"--checkpoint={latest}", "--embedding_size=16", iters=3)
    assert os.readlink(latest) == "3" and (tmp_path / "curves.png").is_file()
    out = capsys.readouterr().out
    assert f"note: skipped 1 damaged line(s) of {tmp_path / 'log.jsonl'}" in out
    records = [line for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert sum(1 for line in records if line.startswith('{"pass": 0, "iter": 9')) == 1  # alone on its line


@pytest.mark.curves
@pytest.mark.usefixtures("no_recall")
def test_a_failing_plot_never_stops_training_or_a_save(tiny_dataset, tmp_path, monkeypatch, capsys):
    import evaluation.plot
    from train_runs import run_train

    def broken(*args):
        raise RuntimeError("no backend")

    monkeypatch.setattr(evaluation.plot, "plot_training", broken)
    run_train(tiny_dataset, tmp_path, iters=1)
    assert os.readlink(tmp_path / "ResNet18" / "latest") == "1"
    assert "note: could not draw curves.png: RuntimeError: no backend" in capsys.readouterr().out


# --- one run per save folder (issue 27 item 1) -----------------------------------------------------

HOLD_SAVE_DIR = """
import sys, time
from utility.locks import FolderLock
FolderLock(sys.argv[1], "training run").acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.usefixtures("no_recall")
def test_a_second_run_into_a_save_folder_in_use_is_refused_naming_the_holder(tiny_dataset, trained, tmp_path):
    from train_runs import copy_run, run_train

    copy_run(trained["save_dir"], tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SAVE_DIR, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        for flags in (["--overwrite=True"], [f"--checkpoint={tmp_path / 'ResNet18' / 'latest'}"]):
            with pytest.raises(UserError, match=rf"in use by another training run \(process {holder.pid}, "):
                run_train(tiny_dataset, tmp_path, *flags, "--embedding_size=16", iters=3)
    finally:
        holder.kill()
        holder.wait()
    assert os.readlink(tmp_path / "ResNet18" / "latest") == "2"
    run_train(tiny_dataset, tmp_path, "--overwrite=True", iters=1)  # the lock went with its process


# --- the disk does not fill: old checkpoints are deleted (issue 27 item 4) -------------------------

def test_keep_checkpoints_keeps_the_last_n_and_the_best(tiny_dataset, tmp_path, monkeypatch, capsys):
    from engine.trainer import Validator
    from train_runs import run_train

    recalls = iter([0.9, 0.2, 0.3, 0.5])  # the best, 0.9, is at iteration 1
    monkeypatch.setattr(Validator, "recall_at_1", lambda *args: next(recalls))
    model_dir = tmp_path / "ResNet18"
    run_train(tiny_dataset, tmp_path, "--save_iter_step=1", "--test_iter_step=1", "--keep_checkpoints=1", iters=3)
    assert sorted(os.listdir(model_dir)) == ["1", "3", "best", "latest"]
    assert os.readlink(model_dir / "best") == "1" and os.readlink(model_dir / "latest") == "3"
    assert "Deleted old checkpoint(s) 2 (--keep_checkpoints 1)" in capsys.readouterr().out
    # resumed, `best` moves only for a better Recall@1 than 0.9 (read back from log.jsonl)
    run_train(tiny_dataset, tmp_path, f"--checkpoint={model_dir / 'latest'}", "--save_iter_step=1",
              "--test_iter_step=1", "--keep_checkpoints=1", iters=4)
    assert sorted(os.listdir(model_dir)) == ["1", "4", "best", "latest"]
    assert os.readlink(model_dir / "best") == "1"


def test_pruning_never_deletes_what_latest_or_best_name_and_a_kill_leaves_no_half_checkpoint(program, tmp_path,
                                                                                            monkeypatch):
    import engine.checkpoint.storage as storage

    model_dir = tmp_path / "m"
    for name in ("1", "2", "3", "4"):
        saved(program, model_dir, name)
    checkpoint.point_best(str(model_dir), "1")
    os.utime(model_dir / "4" / "state.json", (1, 1))  # saved first (an earlier run's), `latest` names it
    assert checkpoint.prune(str(model_dir), 1) == ["2"]
    assert sorted(os.listdir(model_dir)) == ["1", "3", "4", "best", "latest"]

    def killed(path):
        raise Killed()

    monkeypatch.setattr(storage, "_remove", killed)
    with pytest.raises(Killed):
        checkpoint.prune(str(model_dir), 0)
    monkeypatch.undo()
    leftovers = [name for name in os.listdir(model_dir) if name.startswith(".old-")]
    assert leftovers == [f".old-3-{os.getpid()}"] and not (model_dir / "3").exists()


# --- a resume continues the run as it was, or is refused (issue 27 item 6) ------------------------

PK_BATCH = ["--loss_name=batchhardtripletloss", "--samples_each_class=3"]


@pytest.mark.usefixtures("no_recall")
def test_resuming_without_the_saved_cross_batch_memory_is_refused_naming_its_flags(tiny_dataset, tmp_path):
    from train_runs import run_train

    run_train(tiny_dataset, tmp_path, *PK_BATCH, "--xbm_size=24", loss="batchhardtripletloss", iters=1)
    latest = tmp_path / "ResNet18" / "latest"
    with pytest.raises(UserError, match=r"ResNet18/1 holds the state of xbm, which this run does not have: resume "
                                        r"with its settings \(--xbm_size=24 --xbm_start_iter=0\)"):
        run_train(tiny_dataset, tmp_path, *PK_BATCH, f"--checkpoint={latest}", loss="batchhardtripletloss", iters=2)


def test_resuming_a_checkpoint_without_optimizer_state_is_refused(tiny_dataset, trained, tmp_path):
    from train_runs import copy_run, run_train

    copy_run(trained["save_dir"], tmp_path)
    os.remove(tmp_path / "ResNet18" / "2" / "optimizer.safetensors")
    with pytest.raises(UserError, match=r"holds no optimizer state for .*_velocity_.*: a resume would restart the "
                                        r"optimizer's momentum"):
        run_train(tiny_dataset, tmp_path, f"--checkpoint={tmp_path / 'ResNet18' / 'latest'}", "--embedding_size=16",
                  iters=3)


# --- settings checked against the data before training (issue 27 item 10) ------------------------

def test_more_dac_clusters_than_the_classes_allow_is_refused_before_training(tiny_dataset, tmp_path, capsys):
    from train_runs import run_train

    with pytest.raises(UserError, match=r"^--dac_clusters 5 is too many for the 8 classes of .*train.txt: .* use "
                                        r"--dac_clusters 4 or fewer$"):
        run_train(tiny_dataset, tmp_path, *PK_BATCH, "--dac_clusters=5", loss="batchhardtripletloss")
    assert "Training" not in capsys.readouterr().out
