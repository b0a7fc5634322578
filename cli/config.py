"""One configuration step: `resolve(script, argv)` settles every setting of a run, in this order:

  1. defaults and the flags the user typed (cli/args.py);
  2. for eval.py and infer.py without data flags: the data lists the checkpoint was trained with;
  3. the offline digits data set, when no data was given and the default lists are absent;
  4. demo settings for the digits set (train.py), for every one of them the user did not type;
  5. settings adopted from the checkpoint or exported model being evaluated (eval.py, infer.py), and a
     warning block when its data set is not the one the checkpoint was trained on.

The result is a Config that cannot be changed afterwards: every later step reads it.
"""
import argparse
import os
import sys

import data
from cli.args import DEFAULT_ITERATIONS, as_flag, parse_args
from utility.errors import UserError

# Used with the offline digits data set for every one of these flags the user did not type,
# so that the out-of-the-box run finishes in minutes on a 2-core CPU.
DEMO_SETTINGS = {"image_shape": (3, 32, 32), "train_batch_size": 60, "total_iter_num": 150,
                 "lr_steps": [100], "test_iter_step": 50, "save_iter_step": 50}


def loss_settings_from_checkpoint():
    """Besides the network (engine.network_spec.NetworkSpec), eval.py and infer.py take the loss of the
    checkpoint's training run (for eval.py's test_loss) unless the user types them: its name, the P x K
    batch's K and every loss setting's flag (losses.FLAGS; importing losses loads Paddle, hence a function)."""
    import losses

    return ("loss_name", "samples_each_class", *(flag.name for flag in losses.FLAGS))


class Config(argparse.Namespace):
    """The settled configuration of a run: flags by name, read-only."""

    def __init__(self, values):
        vars(self).update(values)

    def __setattr__(self, name, value):
        raise AttributeError(f"the configuration is settled by cli.config.resolve; cannot set {name}")

    def as_dict(self):
        return dict(vars(self))


def resolve(script, argv=None, digits_dir=data.DIGITS_DIR):
    """Parse `argv` for `script` ("train", "eval" or "infer") and settle the run's configuration."""
    args = parse_args(script, argv)
    typed = args.explicit
    values = {name: value for name, value in vars(args).items() if name != "explicit"}
    _settle_loss_name(values)
    _settle_length_and_checkpoints(script, values)
    state = _trained_state(values) if script in ("eval", "infer") else None
    trained_data = _trained_data(state)
    _choose_data(script, values, typed, trained_data, digits_dir)
    if script in ("eval", "infer"):
        _adopt_trained_settings(script, values, typed, state)
    if trained_data and (script == "eval" or not {*data.DATA_FLAGS, "infer_list"} & set(typed)):
        _warn_if_other_data(script, values, trained_data)
    if script == "infer":
        _settle_infer_list(values, typed)
    return Config(values)


def _settle_length_and_checkpoints(script, values):
    """train.py's default length, the threshold the plot needs, the checkpoint folders checked."""
    if script == "train" and values["num_epochs"] is None and values["total_iter_num"] is None:
        values["total_iter_num"] = DEFAULT_ITERATIONS
    if script == "eval" and values["threshold_plot"]:
        values["threshold"] = True  # the plot is of the threshold
    if values.get("checkpoint"):  # train.py resolves it after cleaning up killed saves
        _checkpoint_dir(values["checkpoint"])
    if values.get("pretrained_model"):
        values["pretrained_model"] = _checkpoint_dir(values["pretrained_model"])


def _choose_data(script, values, typed, trained_data, digits_dir):
    """The data when the user typed none: the checkpoint's own (eval/infer), else the offline digits set
    (with train.py's demo settings) when the default CUB lists are absent."""
    needs_data = not (script == "eval" and values["query_list"]) and not (script == "infer" and values["infer_list"])
    if not needs_data:
        return
    if trained_data and not set(data.DATA_FLAGS) & set(typed) and os.path.isfile(trained_data["val_list"]):
        values.update(trained_data)
        print(f"The checkpoint's own data: --data_dir={values['data_dir']} --val_list={values['val_list']}",
              flush=True)
        return
    digits = data.default_dataset(typed, values["train_list"], digits_dir)
    if digits:
        values.update(digits)
        if script == "train":
            _apply_demo_settings(values, typed)


def _settle_infer_list(values, typed):
    """infer.py embeds --val_list unless given --infer_list; a list the user brought is read from its own folder."""
    if values["infer_list"] is None:
        values["infer_list"] = values["val_list"]
    if "data_dir" not in typed and {"infer_list", "val_list"} & set(typed):
        # never the default data set's folder for a list the user brought
        values["data_dir"] = os.path.dirname(os.path.abspath(values["infer_list"]))
        print(f"The images of {values['infer_list']} are read from its folder {values['data_dir']} "
              "(--data_dir chooses another)", flush=True)


def _settle_loss_name(values):
    """The old spelling --triplet_mining=hard names the loss batchhardtripletloss."""
    if values.get("triplet_mining") == "hard":
        if values["loss_name"] != "tripletloss":
            raise UserError(f"--triplet_mining=hard applies to tripletloss only, not {values['loss_name']}")
        values["loss_name"] = "batchhardtripletloss"
    values.pop("triplet_mining", None)


def _checkpoint_dir(path):
    from engine import checkpoint

    return checkpoint.resolve(path)


def _apply_demo_settings(values, typed):
    chosen = {name: value for name, value in DEMO_SETTINGS.items() if name not in typed}
    if "num_epochs" in typed:
        chosen.pop("total_iter_num", None)
    values.update(chosen)
    if chosen:
        print("Demo settings for the digits data set (type a flag to override): "
              + " ".join(f"--{name}={as_flag(value)}" for name, value in chosen.items()), flush=True)


def _trained_state(values):
    """The RunState of --pretrained_model (checked), or None: no checkpoint, or plain parameters."""
    if not values.get("pretrained_model"):
        return None
    from engine.checkpoint import RunState

    return RunState.read(values["pretrained_model"])


def _trained_data(state):
    """{data_dir, train_list, val_list} the checkpoint was trained with, or None when it does not say."""
    recorded = {name: state.args.get(name) for name in data.DATA_FLAGS} if state else {}
    return recorded if recorded and all(isinstance(value, str) for value in recorded.values()) else None


def _warn_if_other_data(script, values, trained):
    """A warning block, never a one-line notice, when the data is not the data set the checkpoint was trained on
    (its images' folder, --data_dir, differs)."""
    if os.path.realpath(values["data_dir"]) == os.path.realpath(trained["data_dir"]):
        return
    lists = ([f"--query_list={values['query_list']}", f"--gallery_list={values['gallery_list']}"]
             if values.get("query_list") else [f"--{'infer' if script == 'infer' else 'val'}_list="
                                               f"{values.get('infer_list') or values['val_list']}"])
    lines = [f"the checkpoint {values['pretrained_model']} was trained on another data set:",
             f"  trained on  --data_dir={trained['data_dir']} --train_list={trained['train_list']} "
             f"--val_list={trained['val_list']}",
             f"  {'evaluating' if script == 'eval' else 'embedding'}  --data_dir={values['data_dir']} "
             + " ".join(lists)]
    if not os.path.isfile(trained["val_list"]):
        lines.append(f"  (its own evaluation list {trained['val_list']} is not found from {os.getcwd()})")
    lines.append("the figures are not those of the data set it was trained for; give --data_dir and "
                 f"--{'infer' if script == 'infer' else 'val'}_list to choose the data")
    rule = "WARNING: " + "=" * 70
    print("\n".join([rule, *(f"WARNING: {line}" for line in lines), rule]), file=sys.stderr, flush=True)


def _adopt_trained_settings(script, values, typed, state):
    """Take the network's settings (its NetworkSpec) and loss from the checkpoint's training run (`state`, its
    RunState), or the network's from the exported model."""
    from engine.network_spec import NetworkSpec

    if values["inference_model"]:
        if values["pretrained_model"] or values.get("export_model"):
            raise UserError("--inference_model runs an exported model: give neither --pretrained_model "
                            "nor --export_model with it")
        from engine.embedder import read_model_info

        trained = read_model_info(values["inference_model"])
        source = "the exported model"
    elif values["pretrained_model"] is None:
        raise UserError("give the trained network with --pretrained_model=DIR (e.g. output/ResNet50/latest)"
                        " or --inference_model=DIR (an exported model)")
    else:
        if not state:
            return  # plain parameters (e.g. pretrained weights): the flags describe the network
        trained = {name: state.args[name] for name in (*loss_settings_from_checkpoint(), "triplet_mining")
                   if name in state.args}
        _settle_loss_name(trained)
        trained.update(state.network)
        source = "the checkpoint's training run"
    adopted = []
    for name in (*NetworkSpec.names(), *loss_settings_from_checkpoint()):
        if name not in trained:
            continue
        value = tuple(trained[name]) if name == "image_shape" else trained[name]
        if values[name] == value:
            continue
        if name in typed:
            print(f"Note: {source} used --{name}={as_flag(value)}, you gave {as_flag(values[name])}", flush=True)
        else:
            values[name] = value
            adopted.append(f"--{name}={as_flag(value)}")
    if adopted:
        print(f"From {source}: {' '.join(adopted)}", flush=True)


def check_model_and_loss(config):
    """UserError for an unknown --model or --loss_name, before any work."""
    import losses
    import models

    if config.model not in models.MODELS:
        raise UserError(f"unknown --model {config.model}; known: {', '.join(models.MODELS)}")
    losses.get(config.loss_name)
