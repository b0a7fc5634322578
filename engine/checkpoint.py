"""Checkpoints: writing them atomically, resuming from them, finetuning from them.

A checkpoint is a directory `<model_save_dir>/<model>/<N>/` holding
  model.pdparams, model.pdopt, model.json   (paddle.static.save of the train program)
  state.json                                 (counters, LR scheduler, class ids, arguments)
state.json is written last, inside a temporary directory that is then renamed
into place, so a directory with a state.json is always complete.
`<model_save_dir>/<model>/latest` is a symbolic link to the newest one.
"""
import json
import os
import shutil

from utility.errors import UserError

PREFIX = "model"
STATE_FILE = "state.json"
LATEST = "latest"


def save_checkpoint(program, model_dir, name, state):
    """Save `program` and `state` (a JSON-able dict) as model_dir/name, then point `latest` at it."""
    import paddle

    os.makedirs(model_dir, exist_ok=True)
    final = os.path.join(model_dir, str(name))
    tmp = os.path.join(model_dir, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    paddle.static.save(program, os.path.join(tmp, PREFIX))
    _write_json(os.path.join(tmp, STATE_FILE), state)
    if os.path.isdir(final):
        old = final + f".old-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    _point_latest(model_dir, str(name))
    return final


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _point_latest(model_dir, name):
    link = os.path.join(model_dir, LATEST)
    tmp_link = link + f".tmp-{os.getpid()}"
    if os.path.lexists(tmp_link):
        os.remove(tmp_link)
    os.symlink(name, tmp_link)
    os.replace(tmp_link, link)


def resolve(path):
    """The checkpoint directory that `path` names (a checkpoint, its `latest` link, or a model dir)."""
    if path is None:
        return None
    if not os.path.exists(path):
        raise UserError(f"checkpoint directory {path} does not exist")
    if os.path.isdir(path) and not _params_prefix(path) and os.path.exists(os.path.join(path, LATEST)):
        path = os.path.join(path, LATEST)
    return os.path.realpath(path)


def _params_prefix(directory):
    """The parameter file prefix in `directory`: ours (model.pdparams) or a lone *.pdparams."""
    ours = os.path.join(directory, PREFIX)
    if os.path.exists(ours + ".pdparams"):
        return ours
    found = sorted(f for f in os.listdir(directory) if f.endswith(".pdparams")) if os.path.isdir(directory) else []
    if len(found) == 1:
        return os.path.join(directory, found[0][: -len(".pdparams")])
    return None


def read_state(directory):
    """state.json of a checkpoint made by train.py, or None for a plain parameter directory."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def load_checkpoint_state(directory, names=()):
    """All saved tensors (parameters and optimizer state) of a checkpoint, by name.

    A directory without a .pdparams file is read in Paddle 1.x's format of one file per variable
    (`save_persistables`, and PaddleCV's pretrained ImageNet weights): the files of `names`.
    """
    import paddle

    prefix = _params_prefix(directory)
    if prefix is not None:
        return paddle.static.load_program_state(prefix)
    state = _per_variable_files(directory, names)
    if not state:
        raise UserError(f"{directory} holds no parameters (expected {PREFIX}.pdparams, "
                        "or one file per parameter named like conv1_weights)")
    return state


def _per_variable_files(directory, names):
    import numpy as np
    from paddle.base import core

    state = {}
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            tensor = core.DenseTensor()
            core.load_dense_tensor(tensor, path)
            state[name] = np.array(tensor)
    return state


def program_parameters(program):
    """{name: shape} of the program's parameters, batch-norm statistics included."""
    return {v.name: tuple(v.shape) for v in program.global_block().all_parameters()}


def restore(program, directory):
    """Load parameters and optimizer state of a checkpoint into `program`, to resume training."""
    import paddle

    _, state = _fitting_state(program, directory)
    paddle.static.set_program_state(program, state)


def load_all_parameters(program, directory):
    """Load every parameter of `program` from a checkpoint (eval, infer); extra tensors are ignored."""
    import paddle

    expected, state = _fitting_state(program, directory)
    paddle.static.set_program_state(program, {name: state[name] for name in expected})


def _fitting_state(program, directory):
    """(the program's {name: shape}, the checkpoint's tensors), after checking that every parameter fits."""
    expected = program_parameters(program)
    state = load_checkpoint_state(directory, expected)
    missing = sorted(set(expected) - set(state))
    wrong = sorted(f"{n} {tuple(state[n].shape)} -> {expected[n]}" for n in expected
                   if n in state and tuple(state[n].shape) != expected[n])
    if missing or wrong:
        problems = ([f"missing {_few(missing)}"] if missing else []) + \
                   ([f"other shape: {_few(wrong)}"] if wrong else [])
        raise UserError(f"{directory} does not fit this network ({'; '.join(problems)}); "
                        "check --model, --embedding_size, --neck and the training list")
    return expected, state


def load_matching(program, directory, log=print):
    """Load the parameters whose name and shape match (finetuning); report what was skipped and why.

    Returns the number of parameters loaded.
    """
    import paddle

    expected = program_parameters(program)
    state = load_checkpoint_state(directory, expected)
    kept, other_shape = {}, []
    for name, shape in expected.items():
        if name in state:
            if tuple(state[name].shape) == shape:
                kept[name] = state[name]
            else:
                other_shape.append(f"{name} {tuple(state[name].shape)} -> {shape}")
    not_in_file = sorted(set(expected) - set(state))
    unused = sorted(n for n in state if n not in expected and not _is_optimizer_slot(n))
    if not kept:
        raise UserError(f"no parameter of this network was found in {directory} "
                        f"(it holds e.g. {_few(sorted(state))}); is --model right?")
    paddle.static.set_program_state(program, kept)
    log(f"Loaded {len(kept)} of {len(expected)} parameters from {directory}")
    if other_shape:
        log(f"Skipped {len(other_shape)} with another shape: {_few(other_shape)}")
    if not_in_file:
        log(f"Kept the initial value of {len(not_in_file)} not in the file: {_few(not_in_file)}")
    if unused:
        log(f"Ignored {len(unused)} from the file that this network does not have: {_few(unused)}")
    return len(kept)


def _is_optimizer_slot(name):
    return "_velocity_" in name or name.startswith("learning_rate")


def _few(names, count=4):
    shown = ", ".join(names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")
